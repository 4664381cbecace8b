"""DKIM and SPF end to end: real Postfix → Outpost (resolver pointed at a
real NSD on loopback serving the test zones) → sink.  Every delivered
signature is verified by dkimpy and by OpenDKIM's library against that DNS."""

from __future__ import annotations

import random
import subprocess
import textwrap
from email.utils import formatdate

import pytest
from dkim.canonicalization import CanonicalizationPolicy

from outpost.effects.dkim import keygen, zone_txt
from tests.services.dns import DnsServer, dkimpy_verify
from tests.services.opendkim import opendkim_verify
from tests.services.smtp import build_message, send

from .outpost_proc import Outpost

EGRESS = "198.51.100.7"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("dkim")
    return {"rsa": keygen("example.com", "s2026", "rsa", 2048, str(d)),
            "ed25519": keygen("example.com", "ed2026", "ed25519", 0, str(d))}


@pytest.fixture(scope="module")
def dns_server(keys):
    zones = {
        "example.com": textwrap.dedent(f"""\
            @ IN TXT "v=spf1 ip4:{EGRESS} -all"
            s2026._domainkey IN TXT ( {zone_txt(keys['rsa'][1])} )
            ed2026._domainkey IN TXT ( {zone_txt(keys['ed25519'][1])} )
            """),
        "example.org": '@ IN TXT "v=spf1 ip4:192.0.2.1 -all"\n',
        "example.net": '@ IN TXT "v=spf1 ip4:192.0.2.1 ~all"\n',
    }
    extra = f"127.{random.randint(64, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"
    with DnsServer(zones, extra_ip=extra) as server:
        yield server


def config(dns_port: int, keys, spf_action: str = "reject") -> str:
    return textwrap.dedent(f"""\
        hostname: relay.example.net
        report_abuse_to: abuse@example.net
        dns: {{nameservers: [127.0.0.1], port: {dns_port}, timeout: 1s, lifetime: 2s}}
        relay: {{egress_ips: [{EGRESS}], spf_domain: spf.relay.example.net}}
        spf: {{action: {spf_action}}}
        domains:
          - name: example.com
            dkim:
              - {{selector: s2026, key: {keys['rsa'][0]}}}
              - {{selector: ed2026, key: {keys['ed25519'][0]}, algorithm: ed25519}}
          - example.org
          - example.net
        users:
          - name: alice
            type: login
            logins: [alice@example.com]
            domains: [example.com, example.org, example.net]
        """)


@pytest.fixture(scope="module")
def outpost(postfix, dns_server, keys):
    proc = Outpost(postfix.milter_socket, config(dns_server.port, keys)).start()
    yield proc
    proc.stop()


def submit(postfix, sender, message):
    return send(postfix.submission_port, xclient={"LOGIN": "alice@example.com"}, mail_from=sender,
                rcpt_tos=["bob@dest.example"], message=message)


def test_signed_with_both_keys_and_verified_independently(postfix, outpost, sink, dns_server):
    msg = build_message("Alice <alice@example.com>", "bob@dest.example", subject="Quarterly  report",
                        headers={"Cc": "carol@dest.example", "X-Outpost-User": "forged"},
                        body="Hello Bob,\n\nthe figures are attached.\n\n-- \nAlice\n")
    r = submit(postfix, "alice@example.com", msg)
    assert r.accepted, r
    [m] = sink.wait_for(1)
    sigs = m.headers("DKIM-Signature")
    assert len(sigs) == 2 and "a=rsa-sha256" in sigs[0] and "a=ed25519-sha256" in sigs[1]
    tags = {t.split("=", 1)[0]: t.split("=", 1)[1] for t in "".join(sigs[0].split()).split(";") if "=" in t}
    assert "l" not in tags and tags["c"] == "relaxed/relaxed"
    signed = tags["h"].lower().split(":")
    assert signed[0] == "from" and signed.count("from") == 2          # From over-signed
    assert "x-outpost-id" in signed and "x-outpost-user" in signed and "cc" in signed
    assert dkimpy_verify(dns_server, m.data) == [True, True]
    assert opendkim_verify(dns_server.extra_ip, m.data) == [("example.com", "s2026", True),
                                                             ("example.com", "ed2026", True)]
    assert m.headers("X-Outpost-SPF")[0].startswith("pass (relay 198.51.100.7 authorized by example.com)")
    # the verification can fail: change the body or a signed header of Outpost
    tampered = m.data.replace(b"the figures are attached", b"the figures are NOT attached")
    assert dkimpy_verify(dns_server, tampered) == [False, False]
    assert [ok for *_, ok in opendkim_verify(dns_server.extra_ip, tampered)] == [False, False]
    forged_id = m.data.replace(b"X-Outpost-User: alice", b"X-Outpost-User: bob")
    assert forged_id != m.data and dkimpy_verify(dns_server, forged_id) == [False, False]


# Runs of spaces and tabs, blanks at line ends, a line of blanks only and
# empty lines at the end: "relaxed" body canonicalisation changes each of
# them, "simple" only the last; a signer that declares c=relaxed/relaxed but
# skips one of those steps makes a body hash no verifier agrees with.
BLANKS_BODY = (b"Figures:\t\tQ1  \t 12   Q2 \t\t 14\r\n"
               b"   indented   line   \r\n"
               b" \t \r\n"
               b"tab\tand  spaces\t \r\n"
               b"end\r\n\r\n\r\n\r\n")


def test_body_with_runs_of_blanks_verifies(postfix, outpost, sink, dns_server):
    relaxed = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed").canonicalize_body(BLANKS_BODY)
    simple = CanonicalizationPolicy.from_c_value(b"simple/simple").canonicalize_body(BLANKS_BODY)
    assert relaxed != simple and b"  " in simple and b"  " not in relaxed
    msg = (b"From: Alice <alice@example.com>\r\nTo: bob@dest.example\r\nSubject: blanks\r\n"
           b"Date: " + formatdate().encode() + b"\r\nMessage-ID: <blanks@example.com>\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n" + BLANKS_BODY)
    r = submit(postfix, "alice@example.com", msg)
    assert r.accepted, r
    [m] = sink.wait_for(1)
    assert m.data.endswith(b"\r\n\r\n" + BLANKS_BODY)            # relayed byte for byte
    sigs = m.headers("DKIM-Signature")
    assert len(sigs) == 2 and all("c=relaxed/relaxed" in "".join(s.split()) for s in sigs)
    assert dkimpy_verify(dns_server, m.data) == [True, True]
    assert opendkim_verify(dns_server.extra_ip, m.data) == [("example.com", "s2026", True),
                                                             ("example.com", "ed2026", True)]


def test_already_signed_message_is_not_signed_twice(postfix, outpost, sink, dns_server):
    msg = build_message("alice@example.com", "bob@dest.example", subject="first pass")
    r = submit(postfix, "alice@example.com", msg)
    assert r.accepted, r
    [first] = sink.wait_for(1)
    sink.clear()
    again = b"\r\n".join(ln for ln in first.data.split(b"\r\n")
                         if not ln.lower().startswith((b"received:", b"x-outpost", b"x-originating",
                                                       b"x-report-abuse")) and not ln.startswith(b"\t"))
    r = submit(postfix, "alice@example.com", again)
    assert r.accepted, r
    [second] = sink.wait_for(1)
    assert len(second.headers("DKIM-Signature")) == 2


def test_unregistered_from_domain_is_not_signed(postfix, outpost, sink):
    msg = build_message("alice@example.org", "bob@dest.example")
    r = send(postfix.submission_port, xclient={"LOGIN": "alice@example.com"}, mail_from="alice@example.org",
             rcpt_tos=["bob@dest.example"], message=msg)
    # example.org's SPF does not authorise the relay: rejected with the fix in the reply
    assert (r.stage, r.code) == ("end", 550), r
    assert r.text == ("5.7.23 SPF for example.org does not authorize this relay; "
                      "add include:spf.relay.example.net")


def test_spf_softfail_is_tagged(postfix, outpost, sink):
    msg = build_message("alice@example.net", "bob@dest.example")
    r = send(postfix.submission_port, xclient={"LOGIN": "alice@example.com"}, mail_from="alice@example.net",
             rcpt_tos=["bob@dest.example"], message=msg)
    assert r.accepted, r
    [m] = sink.wait_for(1)
    assert m.headers("X-Outpost-SPF")[0].startswith("softfail")
    assert m.headers("DKIM-Signature") == []                 # example.net has no key


def test_domains_check_cli(outpost, dns_server):
    out = subprocess.run([*outpost.proc.argv[:3], "domains", "check", "example.com", "-c",
                          str(outpost.config_path)], capture_output=True, text=True,
                         env=outpost.proc.env, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "s2026" in out.stdout and "ed2026" in out.stdout
    bad = subprocess.run([*outpost.proc.argv[:3], "domains", "check", "example.org", "-c",
                          str(outpost.config_path)], capture_output=True, text=True,
                         env=outpost.proc.env, timeout=60)
    assert bad.returncode == 1 and "include:spf.relay.example.net" in bad.stdout
