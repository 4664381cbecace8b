"""Controls a broken Outpost could loosen without a full-message test
noticing, end to end (real Postfix -> Outpost, sqlite store, 2 workers -> sink):

- a ``login`` user's own ``connection_limit``: its (N+1)th concurrent session
  gets 421 at MAIL FROM, while another user on the same IP goes on sending;
- a lock on an identity that comes from a header (known only at end of
  message): 451 4.7.1 at end of DATA, while mail to the abuse contact and
  from the user's other identities still passes.
"""

from __future__ import annotations

import smtplib
import subprocess
import textwrap

import pytest

from tests.services.smtp import build_message, send

from .outpost_proc import Outpost

LIMIT = 2
CONFIG = textwrap.dedent(f"""\
    hostname: relay.example.net
    report_abuse_to: abuse@example.net
    connection_limit: 10
    domains: [example.com]
    users:
      - name: capped
        type: login
        logins: [carol@example.com]
        domains: [example.com]
        connection_limit: {LIMIT}
      - name: alice
        type: login
        logins: [alice@example.com]
        domains: [example.com]
      - name: webfarm
        type: ip
        ips: [203.0.113.0/28]
        domains: [example.com]
        identity_headers:
          - {{header: X-AuthUser}}
    """)

TOO_MANY = "4.7.0 Too many concurrent SMTP connections from this IP address; please try again later"
CLIENT = "192.0.2.50"          # this module's own client address (XCLIENT), counted on its own


@pytest.fixture(scope="module")
def outpost(postfix):
    proc = Outpost(postfix.milter_socket, CONFIG).start()
    yield proc
    proc.stop()


def cli(outpost, *args):
    out = subprocess.run([*outpost.proc.argv[:3], *args, "-c", str(outpost.config_path)],
                         capture_output=True, text=True, env=outpost.proc.env, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def open_session(postfix, login: str) -> smtplib.SMTP:
    """A session from CLIENT as ``login`` that got past MAIL FROM and stays open."""
    c = smtplib.SMTP("127.0.0.1", postfix.submission_port, timeout=15)
    c.ehlo("client.example")
    assert c.docmd("XCLIENT", f"ADDR={CLIENT} LOGIN={login}")[0] == 220
    c.ehlo("client.example")
    code, text = c.docmd("MAIL", f"FROM:<{login}>")
    assert code == 250, (code, text)
    return c


def test_login_users_own_connection_limit(postfix, outpost, sink):
    held = []
    try:
        for _ in range(LIMIT):
            held.append(open_session(postfix, "carol@example.com"))
        over = send(postfix.submission_port, xclient={"ADDR": CLIENT, "LOGIN": "carol@example.com"},
                    mail_from="carol@example.com", rcpt_tos=["x@dest.example"])
        assert (over.stage, over.code) == ("mail", 421), over
        assert TOO_MANY in over.text
        # another user on the same IP, while carol's sessions are still open
        other = send(postfix.submission_port, xclient={"ADDR": CLIENT, "LOGIN": "alice@example.com"},
                     mail_from="alice@example.com", rcpt_tos=["x@dest.example"])
        assert other.accepted, other
        [m] = sink.wait_for(1)
        assert m.mail_from == "alice@example.com" and m.headers("X-Outpost-User") == ["alice"]
        # the held sessions themselves are served to the end
        c = held[0]
        assert c.docmd("RCPT", "TO:<y@dest.example>")[0] == 250
        assert c.data(build_message("carol@example.com", "y@dest.example"))[0] == 250
        assert {x.mail_from for x in sink.wait_for(2)} == {"alice@example.com", "carol@example.com"}
    finally:
        for c in held:
            c.close()


def webfarm(postfix, identity: str, rcpt: str = "x@dest.example"):
    msg = build_message("web@example.com", rcpt, headers={"X-AuthUser": identity})
    return send(postfix.relay_port, xclient={"ADDR": "203.0.113.5"}, mail_from="web@example.com",
                rcpt_tos=[rcpt], message=msg)


def test_lock_on_identity_from_header_holds_at_end_of_data(postfix, outpost, sink):
    assert "locked webfarm/1001" in cli(outpost, "lock", "webfarm/1001")
    try:
        r = webfarm(postfix, "1001")
        assert (r.stage, r.code) == ("end", 451), r
        assert r.text == ("4.7.1 Sending from 1001 is suspended because of suspected abuse; "
                          "contact abuse@example.net")
        # the abuse desk stays reachable, and the user's other identities are not locked
        to_abuse = webfarm(postfix, "1001", rcpt="abuse@example.net")
        assert to_abuse.accepted, to_abuse
        other = webfarm(postfix, "1002")
        assert other.accepted, other
        got = sink.wait_for(2)
        assert sorted(m.rcpt_tos for m in got) == [("abuse@example.net",), ("x@dest.example",)]
        assert all(m.headers("X-Outpost-User") == ["webfarm"] for m in got)
    finally:
        cli(outpost, "unlock", "webfarm/1001")
    assert webfarm(postfix, "1001").accepted
