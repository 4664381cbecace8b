"""The local door (issue #22): on a relay that also runs customers' scripts,
no local path sends mail past Outpost -- with the contrib files as shipped.

* sendmail(1) (PHP's mail(), ``sendmail -bs``) goes through Outpost
  (``non_smtpd_milters``) and maps to the ``local`` user: identity, stamps,
  limits, spam verdicts and reports like any other user;
* a local user cannot forge its envelope sender (``local_login_sender_maps``),
  so refusals bounce to the submitter itself;
* every loopback listener is filtered or closed: the report listener admits
  only the ``outpost-reports`` SASL login, and the report sender uses it;
* with Outpost down, local mail waits in the maildrop queue, then goes out
  filtered.

Runs the real Postfix of ``tests/services/postfix.py`` (built from
``contrib/postfix/``) and submits as the unprivileged Unix user ``nobody``
(``tests/services/local_submit.py``) or as root.
"""

from __future__ import annotations

import re
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from outpost.core.idtoken import TokenCodec, read_secret
from tests.corpus import SPAM, corpus_message
from tests.effects.reports.arfcheck import check as check_arf
from tests.services.local_submit import USER, sendmail
from tests.services.poll import wait_until
from tests.services.smtp import build_message, send

from .outpost_proc import Outpost

LIMIT = 3          # messages per identity per hour for the local user


def config(reports_smtp: str, spool: Path) -> str:
    return textwrap.dedent(f"""\
        hostname: relay.example.net
        report_abuse_to: abuse@example.net
        domains: [example.com, example.org]
        reports:
          spool_dir: {spool}
          from_addr: outpost@relay.example.net
          smtp: {reports_smtp}
          poll_interval: 0.3
          retry_initial: 0.5
          retry_max: 1
        defaults:
          lock: {{after_spam: 1000}}
        users:
          - name: alice
            type: login
            logins: [alice@example.com]
            domains: [example.com]
          - name: scripts
            type: local
            domains: [example.com]
            limits: {{messages: ["{LIMIT}/1h"], max_recipients: 3}}
            identity_headers:
              - {{header: X-PHP-Originating-Script, regex: '^(\\d+):', remove: true}}
        """)


@pytest.fixture(scope="module")
def outpost(postfix):
    # The shipped table lets each login send only as itself; this host's
    # customer "nobody" may also use its domain (first match wins).
    table = postfix.config_dir / "outpost-login-senders.regexp"
    shipped = table.read_text() if table.exists() else ""
    table.write_text("/^nobody$/ nobody @example.com\n" + shipped)
    spool = Path("/tmp") / f"outpost-spool-local-{time.time_ns()}"
    proc = Outpost(postfix.milter_socket, config(postfix.reports_yaml(), spool)).start()
    proc.codec = TokenCodec(read_secret(str(proc.secret_file)))
    yield proc
    proc.stop(graceful=False)


def kick_pickup(postfix) -> None:
    """Make pickup scan the maildrop queue now (it does every 60 s anyway)."""
    subprocess.run(["postkick", "-c", str(postfix.config_dir), "public", "pickup", "W"],
                   check=True, timeout=10)


def to(sink, rcpt: str):
    return [m for m in sink.messages if rcpt in m.rcpt_tos]


def php_mail(sender: str, rcpt: str, uid: str = "1001", subject: str = "hi") -> bytes:
    """A message as PHP's mail() hands it to sendmail(1)."""
    return build_message(sender, rcpt, subject=subject,
                         headers={"X-PHP-Originating-Script": f"{uid}:contact.php"})


def test_sendmail_as_a_local_user_is_filtered_identified_and_stamped(postfix, outpost, sink):
    out = sendmail(postfix, php_mail("www@example.com", "friend@dest.example"),
                   "-f", "www@example.com", "friend@dest.example", user=USER)
    assert out.returncode == 0, out.stderr
    [msg] = wait_until(lambda: to(sink, "friend@dest.example"), what="delivery")
    assert msg.headers("X-Outpost-User") == ["scripts"]
    assert msg.headers("X-PHP-Originating-Script") == []          # remove: true
    assert msg.headers("X-Report-Abuse-To") == ["abuse@example.net"]
    origin = outpost.codec.open(msg.headers("X-Outpost-ID")[0])
    assert (origin.user, origin.identity) == ("scripts", "1001")
    assert re.search(r"uid=65534 from=<www@example.com>", postfix.maillog())  # pickup: it was nobody
    assert re.search(r"user=scripts identity=1001 from=<www@example.com> .*action=accept", outpost.log())


def test_sendmail_bs_is_filtered_too(postfix, outpost, sink):
    """``sendmail -bs`` speaks SMTP on standard input (Postfix's smtpd in
    stand-alone mode): still no SMTP client, still the local user."""
    body = build_message("www@example.com", "bs@dest.example").decode()
    dialogue = (f"EHLO script\r\nMAIL FROM:<www@example.com>\r\nRCPT TO:<bs@dest.example>\r\n"
                f"DATA\r\n{body}\r\n.\r\nQUIT\r\n").encode()
    out = sendmail(postfix, dialogue, "-bs", user=USER)
    assert out.returncode == 0 and "250 2.0.0 Ok: queued" in out.stdout, out
    [msg] = wait_until(lambda: to(sink, "bs@dest.example"), what="delivery")
    assert msg.headers("X-Outpost-User") == ["scripts"]
    assert outpost.codec.open(msg.headers("X-Outpost-ID")[0]).identity == "www@example.com"


def test_a_local_user_cannot_forge_its_envelope_sender(postfix, outpost, sink):
    """postdrop refuses the sender before anything is queued: no message,
    no bounce to a stranger."""
    out = sendmail(postfix, php_mail("ceo@bank.example", "mark@dest.example"),
                   "-f", "ceo@bank.example", "mark@dest.example", user=USER)
    assert out.returncode != 0
    assert "not authorized to use sender='ceo@bank.example'" in out.stderr
    assert postfix.queue() == []
    assert "ceo@bank.example" not in postfix.maillog()


def test_a_sender_domain_outside_the_local_user_bounces_to_the_submitter(postfix, outpost, sink):
    """Refused at MAIL FROM: sendmail(1) has already returned, so Postfix
    tells the (unforgeable) envelope sender with a bounce."""
    out = sendmail(postfix, php_mail("www@example.org", "o@dest.example"),
                   "-f", "www@example.org", "o@dest.example")
    assert out.returncode == 0, out.stderr
    [bounce] = wait_until(lambda: to(sink, "www@example.org"), what="bounce")
    assert bounce.mail_from in ("", "<>")
    assert b"Sender domain example.org is not allowed for scripts" in bounce.data
    assert to(sink, "o@dest.example") == []


def test_too_many_recipients_bounce_instead_of_sticking(postfix, outpost, sink):
    """No RCPT-stage refusal for local mail: the whole message is refused
    at its end, permanently (550), so it bounces instead of waiting in
    maildrop -- and no recipient gets it."""
    rcpts = [f"many{n}@dest.example" for n in range(4)]
    out = sendmail(postfix, php_mail("www@example.com", rcpts[0], uid="4004"),
                   "-f", "www@example.com", *rcpts, user=USER)
    assert out.returncode == 0, out.stderr
    [bounce] = wait_until(lambda: [m for m in to(sink, "www@example.com")
                                   if b"Too many recipients (4, at most 3" in m.data], what="bounce")
    assert bounce.mail_from in ("", "<>")
    assert not any(to(sink, r) for r in rcpts)
    assert not [e for e in postfix.queue() if e.queue_name == "maildrop"]


def test_local_rate_limit_holds_the_excess_in_the_maildrop_queue(postfix, outpost, sink):
    """Over its limit, a local identity's message is tempfailed at end of
    message (never at RCPT: Postfix forbids it for non-SMTP milters); it
    waits in the maildrop queue -- pickup offers it again later."""
    rcpts = [f"r{n}@dest.example" for n in range(LIMIT + 1)]
    for rcpt in rcpts:
        out = sendmail(postfix, php_mail("www@example.com", rcpt, uid="2002"),
                       "-f", "www@example.com", rcpt)
        assert out.returncode == 0, out.stderr
    postfix.wait_for_log(r"milter-reject: END-OF-MESSAGE from localhost\[127\.0\.0\.1\]: 4\.7\.1 "
                         r"Too many messages from 2002")
    wait_until(lambda: sum(bool(to(sink, r)) for r in rcpts) == LIMIT, what=f"{LIMIT} deliveries")
    held = wait_until(lambda: [e for e in postfix.queue() if e.queue_name == "maildrop"],
                      what="a message in maildrop")
    assert len(held) == 1
    assert sum(bool(to(sink, r)) for r in rcpts) == LIMIT
    postfix.postsuper("-d", "ALL", "maildrop")


def cli(outpost, *args):
    return subprocess.run([*outpost.proc.argv[:3], *args, "-c", str(outpost.config_path)],
                          capture_output=True, text=True, env=outpost.proc.env, timeout=30, check=True)


def test_a_locked_local_identity_waits_in_maildrop_until_unlocked(postfix, outpost, sink):
    cli(outpost, "lock", "scripts/3003")
    out = sendmail(postfix, php_mail("www@example.com", "locked@dest.example", uid="3003"),
                   "-f", "www@example.com", "locked@dest.example", user=USER)
    assert out.returncode == 0, out.stderr
    postfix.wait_for_log(r"milter-reject: END-OF-MESSAGE from localhost\[127\.0\.0\.1\]: 4\.7\.1 "
                         r"Sending from 3003 is suspended")
    assert [e.queue_name for e in postfix.queue()] == ["maildrop"]
    cli(outpost, "unlock", "scripts/3003")
    kick_pickup(postfix)
    [msg] = wait_until(lambda: to(sink, "locked@dest.example"), what="delivery after unlock")
    assert msg.headers("X-Outpost-User") == ["scripts"]


def test_spam_from_sendmail_is_refused_bounced_and_reported(postfix, outpost, sink):
    spam = corpus_message("spam", SPAM, "www@example.com")
    out = sendmail(postfix, spam, "-f", "www@example.com", "victim@dest.example", user=USER)
    assert out.returncode == 0, out.stderr
    postfix.wait_for_log(r"milter-reject: END-OF-MESSAGE from localhost\[127\.0\.0\.1\]: 5\.7\.1 "
                         r"Message rejected as spam")
    [bounce] = wait_until(lambda: to(sink, "www@example.com"), what="bounce to the submitter")
    assert bounce.mail_from in ("", "<>") and b"Message rejected as spam" in bounce.data
    [report] = wait_until(lambda: to(sink, "abuse@example.net"), timeout=30, what="abuse report")
    fields = {k.lower(): v for k, v in check_arf(report.data).fields.items()}
    assert [v.strip("<>") for v in fields["original-mail-from"]] == ["www@example.com"]
    assert b"scripts/www@example.com" in report.data
    assert report.headers("X-Outpost-User") == []          # the report listener has no milter
    assert to(sink, "victim@dest.example") == []


LISTENERS = ["submission_port", "smtps_port", "relay_port", "reports_port"]


@pytest.mark.parametrize("listener", LISTENERS)
def test_no_loopback_listener_relays_for_a_local_process(postfix, outpost, sink, listener):
    """A script connecting to 127.0.0.1: every shipped listener either
    refuses it or hands it to Outpost (which has no user for loopback)."""
    r = send(getattr(postfix, listener), mail_from="www@example.com", rcpt_tos=["spam@dest.example"],
             tls="implicit" if listener == "smtps_port" else None)
    assert not r.accepted, r
    assert r.code >= 500 and r.stage in ("rcpt", "mail"), r
    if listener == "relay_port":                          # through Outpost
        assert "127.0.0.1 is not an authorized outgoing sender" in r.text
    assert to(sink, "spam@dest.example") == []


def test_report_listener_admits_only_the_report_login(postfix, outpost, sink):
    """A customer's own SASL login (a script knows it) does not open the
    report listener; Outpost's credential does, and the mail is not
    filtered there."""
    postfix.add_sasl_user("alice@example.com", "alicepw")
    r = send(postfix.reports_port, mail_from="alice@example.com", rcpt_tos=["x@dest.example"],
             login="alice@example.com", password="alicepw")
    assert (r.stage, r.code) == ("rcpt", 554), r
    r = send(postfix.reports_port, mail_from="outpost@relay.example.net",
             rcpt_tos=["abuse-desk@dest.example"],
             login=postfix.report_login, password=postfix.report_password)
    assert r.accepted, r
    [msg] = wait_until(lambda: to(sink, "abuse-desk@dest.example"), what="delivery")
    assert msg.headers("X-Outpost-User") == []


def test_outpost_down_local_mail_waits_then_leaves_filtered(postfix, outpost, sink):
    """milter_default_action = tempfail: nothing leaves unfiltered; the
    message stays in maildrop and goes out, stamped, once Outpost is back.
    (Last in the module: it restarts Outpost.)"""
    outpost.stop(graceful=False)
    try:
        out = sendmail(postfix, php_mail("www@example.com", "later@dest.example"),
                       "-f", "www@example.com", "later@dest.example", user=USER)
        assert out.returncode == 0, out.stderr
        postfix.wait_for_log(r"milter-reject: CONNECT from localhost\[127\.0\.0\.1\]: 4\.7\.1 "
                             r"Service unavailable - try again later; from=<www@example.com>")
        assert [e.queue_name for e in postfix.queue()] == ["maildrop"]
        assert to(sink, "later@dest.example") == []
    finally:
        outpost.start()
    kick_pickup(postfix)
    [msg] = wait_until(lambda: to(sink, "later@dest.example"), timeout=30, what="delivery")
    assert msg.headers("X-Outpost-User") == ["scripts"]
