"""The compromised customer against the abuse desk, through real Postfix
(#14 items 6 and 7): spam dressed as an abuse report is still blocked and
reported; a script rotating X-AuthUser gets its whole user locked (the abuse
contact still reachable, other users untouched); the report volume of one
user is bounded, the rest folded into counts."""

from __future__ import annotations

import email
import email.policy
import re
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from outpost.effects.reports import Spool, list_items
from tests.corpus import HAM, SPAM, corpus_message
from tests.effects.reports.arfcheck import check as check_arf
from tests.services.smtp import send

from .outpost_proc import Outpost

ABUSE = "abuse@example.net"


def config(smtp: str, spool: Path) -> str:
    return textwrap.dedent(f"""\
        hostname: relay.example.net
        report_abuse_to: {ABUSE}
        domains: [dressed.example, farm.example, other.example, storm.example]
        reports:
          spool_dir: {spool}
          from_addr: outpost@relay.example.net
          smtp: {smtp}
          max_per_hour: 10
          max_per_user: 3
          poll_interval: 0.2
        users:
          - name: dressed
            type: ip
            ips: [203.0.113.10/32]
            domains: [dressed.example]
          - name: farm
            type: ip
            ips: [203.0.113.20/32]
            domains: [farm.example]
            abuse_contact: abuse@farm.example
            lock: {{after_spam: 5, user_after_spam: 2}}
            identity_headers:
              - {{header: X-AuthUser}}
          - name: other
            type: ip
            ips: [203.0.113.30/32]
            domains: [other.example]
          - name: storm
            type: ip
            ips: [203.0.113.40/32]
            domains: [storm.example]
            lock: {{after_spam: 1000, user_after_spam: 1000}}
            identity_headers:
              - {{header: X-AuthUser}}
        """)


@pytest.fixture(scope="module")
def outpost(postfix):
    spool = Path("/tmp") / f"outpost-spool-abuse-{time.time_ns()}"
    proc = Outpost(postfix.milter_socket, config(postfix.reports_yaml(), spool)).start()
    proc.spool = spool
    yield proc
    proc.stop(graceful=False)


def relay(postfix, ip, sender, message, rcpts=("victim@dest.example",)):
    return send(postfix.relay_port, xclient={"ADDR": ip}, mail_from=sender,
                rcpt_tos=list(rcpts), message=message)


def cli(outpost, *args):
    return subprocess.run([*outpost.proc.argv[:3], *args, "-c", str(outpost.config_path)],
                          capture_output=True, text=True, env=outpost.proc.env, timeout=60)


def with_header(raw: bytes, line: str) -> bytes:
    return line.encode() + b"\r\n" + raw


def dressed_as_report(raw: bytes) -> bytes:
    """The spam inside ``multipart/report; report-type=feedback-report``."""
    head, _, body = raw.partition(b"\r\n\r\n")
    kept = [ln for ln in re.split(rb"\r\n(?![ \t])", head)
            if not re.match(rb"(?i)(content-[a-z-]+|mime-version|auto-submitted):", ln)]
    kept += [b"MIME-Version: 1.0", b"Auto-Submitted: auto-generated",
             b"Content-Type: multipart/report; report-type=feedback-report; boundary=\"b1\""]
    return (b"\r\n".join(kept) + b"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\n" + body
            + b"\r\n--b1--\r\n")


def arrived(sink, pick, n=1, timeout=30.0):
    """Wait (bounded) until ``n`` messages that ``pick`` arrived; return them."""
    deadline = time.monotonic() + timeout
    while True:
        got = [m for m in sink.messages if pick(m)]
        if len(got) >= n or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def subject(m):
    return " ".join((email.message_from_bytes(m.data, policy=email.policy.default)["Subject"] or "").split())


def reports_about(sink, sender):
    return [m for m in sink.messages if ABUSE in m.rcpt_tos
            and check_arf(m.data).fields.get("original-mail-from") == [f"<{sender}>"]]


def test_spam_dressed_as_a_feedback_report_is_blocked_and_reported(postfix, outpost, sink):
    """#14.6: a Content-Type of ``multipart/report; report-type=feedback-report``
    does not silence the abuse desk."""
    sender = "www@dressed.example"
    spam = dressed_as_report(corpus_message("spam", SPAM, sender))
    r = relay(postfix, "203.0.113.10", sender, spam)
    assert r.code == 550 and "rejected as spam" in r.text, r
    deadline = time.monotonic() + 30
    while not reports_about(sink, sender) and time.monotonic() < deadline:
        time.sleep(0.1)
    [rep] = reports_about(sink, sender)
    fields = {k.lower(): v for k, v in check_arf(rep.data).fields.items()}
    assert fields["feedback-type"] == ["abuse"]
    attached = [p.get_payload(0) for p in email.message_from_bytes(rep.data).walk()
                if p.get_content_type() == "message/rfc822"]
    assert [(a.get_content_type(), a.get_param("report-type")) for a in attached] == [
        ("multipart/report", "feedback-report")]                   # the report is about that message
    assert r.text.rsplit(" ", 1)[1].encode() in rep.data             # the reference of the reject


def test_rotating_identities_lock_the_whole_user(postfix, outpost, sink):
    """#14.7: a new X-AuthUser on every spam never reaches an identity's
    threshold, but the user's (``lock.user_after_spam: 2``) locks the user as a
    whole: a fresh identity is refused at RCPT, the abuse contact still gets
    mail, another user is untouched."""
    sender = "www@farm.example"
    spam = corpus_message("spam", SPAM, sender)
    ham = corpus_message("ham", HAM, sender)
    for n in range(2):
        r = relay(postfix, "203.0.113.20", sender, with_header(spam, f"X-AuthUser: bot{n}"))
        assert r.code == 550, (n, r)
    r = relay(postfix, "203.0.113.20", sender, with_header(ham, "X-AuthUser: fresh"))
    assert (r.stage, r.code) == ("rcpt", 451), r
    assert "Sending from farm is suspended" in r.text and "abuse@farm.example" in r.text
    r = relay(postfix, "203.0.113.20", sender, with_header(ham, "X-AuthUser: fresh"),
              rcpts=["abuse@farm.example"])
    assert r.accepted, r
    [contact] = arrived(sink, lambda m: m.mail_from == sender)
    assert contact.rcpt_tos == ("abuse@farm.example",)
    assert contact.headers("X-Outpost-User") == ["farm"]
    # the user's lock is reported to the user's abuse contact
    [lock] = arrived(sink, lambda m: subject(m).startswith("[Outpost] user farm (all identities) locked"))
    assert lock.rcpt_tos == ("abuse@farm.example",)
    other = corpus_message("ham", HAM, "www@other.example")
    r = relay(postfix, "203.0.113.30", "www@other.example", other)
    assert r.accepted, r
    # the operator sees the user's lock and lifts it
    listing = cli(outpost, "locks")
    assert "user:farm" in listing.stdout and "2 spam verdicts of all its identities" in listing.stdout
    assert cli(outpost, "unlock", "farm").stdout.strip() == "unlocked user:farm"
    r = relay(postfix, "203.0.113.20", sender, with_header(ham, "X-AuthUser: fresh"))
    assert r.accepted, r


def test_report_volume_is_bounded_per_user(postfix, outpost, sink):
    """#14.7: 12 spam from 12 identities of one user: 3 reports
    (``max_per_user``), the other 9 incidents held for one
    aggregated report (Incidents), none lost."""
    sender = "www@storm.example"
    spam = corpus_message("spam", SPAM, sender)
    for n in range(12):
        r = relay(postfix, "203.0.113.40", sender, with_header(spam, f"X-AuthUser: rot{n:02d}"))
        assert r.code == 550, (n, r)
    spool = Spool(str(outpost.spool))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        items = [i for i in list_items(spool) if i.identity.startswith("storm/")]
        if [i.state for i in items] == ["held"] * 9:
            break
        time.sleep(0.1)
    assert [i.state for i in items] == ["held"] * 9, items
    deadline = time.monotonic() + 30
    while len(reports_about(sink, sender)) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    got = reports_about(sink, sender)
    assert len(got) == 3, len(got)
    assert all("incidents" not in {k.lower() for k in check_arf(m.data).fields} for m in got)
