#!/usr/bin/env python3
"""``make demo``: Outpost at work in a throw-away Postfix on loopback.

Starts an SMTP sink (the "Internet"), a private Postfix whose submission and
relay services call Outpost, and Outpost itself with an embedded example
configuration and an sqlite store in a temporary directory.  Then it sends a
few messages the way customers would, prints what happened to each and the
headers that arrived, starts the web panel (``outpost panel``) on the same
store and prints its address and a demo login, and stops everything (on a
terminal it first waits for Enter, so the panel can be visited).
"""

from __future__ import annotations

import argparse
import http.cookiejar
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

from outpost.core.idtoken import new_secret
from outpost.panel.auth import hash_password
from tests.services.milter import MilterProcess
from tests.services.postfix import PostfixInstance, free_port
from tests.services.sendmail import SendmailInstance
from tests.services.sink import SmtpSink
from tests.services.smtp import build_message, send

CONFIG = textwrap.dedent("""\
    hostname: relay.example.net
    report_abuse_to: abuse@example.net
    connection_limit: 10
    domains: [example.com, example.org]
    defaults:
      limits:
        messages: ["60/1m", "1000/1h"]
        max_recipients: 100
    users:
      - name: webfarm                      # a shared web server, relaying by IP
        type: ip
        ips: [127.0.0.77/32]
        domains: [example.com]
        identity_headers:
          - {header: X-AuthUser}
          - {header: X-PHP-Originating-Script, regex: '^(\\d+):', remove: true}
      - name: alice                        # a customer with an SMTP AUTH login
        type: login
        logins: [alice@example.com]
        domains: [example.com]
    volume:                                # volume anomalies per identity
      baseline: {messages: 1, recipients: 1, domains: 1, new_domains: 1}
      spike: 3
      extreme: 6
      action: hold
    """)

BOLD, DIM, GREEN, RED, RESET = ("\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[0m") \
    if sys.stdout.isatty() else ("",) * 5

SHOWN = ("From", "To", "Subject", "X-Outpost-User", "X-Outpost-Domain", "X-Originating-IP",
         "X-Outpost-ID", "X-Report-Abuse-To", "X-Outpost-Class", "X-Outpost-Score", "X-Outpost-Evidence",
         "X-PHP-Originating-Script", "DKIM-Signature")

SPAM = (b"From: Alice <alice@example.com>\r\nTo: friend@dest.example\r\n"
        b"Subject: URGENT: claim your FREE prize now!!!\r\n\r\n"
        b"Dear friend,\r\n\r\nYou have been SELECTED to receive a FREE cash prize of $1,000,000!!!\r\n"
        b"Act now: click here to claim your money, limited time offer, 100% free, no risk.\r\n"
        b"Order now and earn extra income from home. Remove me: reply with REMOVE.\r\n")


def title(n: int, text: str) -> None:
    print(f"\n{BOLD}{n}. {text}{RESET}")


def outcome(result) -> None:
    colour = GREEN if result.accepted else RED
    verdict = "accepted" if result.accepted else f"refused at {result.stage.upper()}"
    print(f"   SMTP: {colour}{result.code} {result.text}{RESET}  ({verdict})")


def arrived(sink: SmtpSink, count: int) -> None:
    msgs = sink.wait_for(count, timeout=20)
    msg = msgs[-1].message
    print("   arrived at the destination with:")
    for name in SHOWN:
        for value in msg.get_all(name, []):
            print(f"     {name}: {value}")


#: Lines of the metrics page shown by the demo (sample name prefixes).
METRICS_SHOWN = ("outpost_messages_total", "outpost_user_messages_total", "outpost_message_seconds_count",
                 "outpost_spam_score_count", "outpost_locks_active", "outpost_report_spool_items",
                 "outpost_store_up", "outpost_workers")


def metrics_page(url: str, messages: int, timeout: float = 15.0) -> str:
    """The metrics page once ``messages`` messages are counted (each is
    counted when its connection closes)."""
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
        counted = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                      if line.startswith("outpost_message_seconds_count"))
        if counted >= messages or time.monotonic() > deadline:
            return text
        time.sleep(0.2)


def panel_entries(url: str, password: str, timeout: float = 30.0) -> str:
    """Log in to the panel as ``demo`` (as a browser would: the login form's
    CSRF token, then the session cookie) and read the decision log's size."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    deadline = time.monotonic() + timeout
    while True:
        try:
            with opener.open(url + "/login", timeout=5) as resp:
                page = resp.read().decode()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    form = urllib.parse.urlencode({"name": "demo", "password": password, "csrf": csrf}).encode()
    with opener.open(url + "/login", data=form, timeout=10):
        pass
    with opener.open(url + "/blocked?all=1", timeout=10) as resp:
        page = resp.read().decode()
    found = re.search(r"<p>(\d+) found in entries", page)
    return found.group(1) if found else "?"


def volume_burst(step: object, postfix, sink: SmtpSink, abuse_desk: SmtpSink) -> None:
    """A hijacked web-farm mailbox sends a burst: ``volume_spike`` evidence,
    then the message held; another identity of the same user is untouched;
    the abuse desk's report names the baseline and the burst."""
    title(step, "a web-farm mailbox (X-AuthUser: shop) is hijacked and sends a burst")  # type: ignore[arg-type]
    start = len(sink.messages)
    lines, held = [], None
    for n in range(1, 9):
        rcpt = f"lead@prospect{n}.example"
        msg = build_message("shop@example.com", rcpt, subject=f"Invoice {n} overdue",
                            body=f"Please find invoice {n} at the link below.\n",
                            headers={"X-AuthUser": "shop"})
        r = send(postfix.relay_port, source_address="127.0.0.77", mail_from="shop@example.com",
                 rcpt_tos=[rcpt], message=msg)
        if r.accepted and r.queue_id in postfix.hold_queue():
            held = (n, r)
            break
        lines.append((n, rcpt, r))
    sink.wait_for(start + len([x for x in lines if x[2].accepted]), timeout=20)
    for n, rcpt, r in lines:
        got = [m for m in sink.messages if m.rcpt_tos == (rcpt,)]
        evidence = got[0].headers("X-Outpost-Evidence") if got else []
        print(f"   message {n} to {rcpt}: {r.code} {'delivered' if got else r.text}"
              + (f", X-Outpost-Evidence: {evidence[0]}" if evidence else ""))
    if held is None:
        print(f"   {RED}no message was held{RESET}")
        return
    n, r = held
    print(f"   message {n}: {GREEN}{r.code}{RESET} accepted, then {BOLD}held{RESET} by the MTA "
          f"(queue id {r.queue_id}; outpost quarantine list|release|delete)")
    rcpt = "reader@blog.example"
    r = send(postfix.relay_port, source_address="127.0.0.77", mail_from="shop@example.com", rcpt_tos=[rcpt],
             message=build_message("shop@example.com", rcpt, subject="New post",
                                   headers={"X-AuthUser": "blog"}))
    got = sink.wait_for(len(sink.messages) + 1, timeout=20)[-1] if r.accepted else None
    evidence = got.headers("X-Outpost-Evidence") if got is not None else []
    print(f"   another identity of webfarm (X-AuthUser: blog): {r.code} "
          f"{'delivered, ' + (evidence[0] if evidence else 'no evidence') if got else r.text}")
    deadline = time.monotonic() + 30                 # the report sender passes every 0.5 s
    found = []
    while not found and time.monotonic() < deadline:
        found = [m.message for m in abuse_desk.messages if (m.message["X-Outpost-Report"] or "")
                 .startswith("volume;")]
        time.sleep(0.2)
    if not found:
        print(f"   {RED}no volume report arrived{RESET}")
        return
    text = next(p for p in found[0].walk() if p.get_content_type() == "text/plain").get_content()
    print(f"   the abuse desk got: {found[0]['Subject']}")
    for line in [ln.strip() for ln in text.splitlines() if "baseline" in ln][:2]:
        print(f"     > {line}")


def arf_report(delivered: bytes, rcpt: str) -> bytes:
    """An ARF complaint (RFC 5965) as a receiver's feedback loop sends it,
    around the copy of our message it received."""
    from email.message import EmailMessage
    from email.policy import SMTP
    report = EmailMessage(policy=SMTP)
    report["From"] = "Feedback Loop <fbl@dest.example>"
    report["To"] = "abuse@example.net"
    report["Subject"] = "FW: abuse report"
    report["MIME-Version"] = "1.0"
    report.set_content("This is an email abuse report for an email message received from "
                       "relay.example.net.\n")
    report.make_mixed()
    report.replace_header("Content-Type", "multipart/report; report-type=feedback-report")
    report.set_boundary("arf-demo-boundary")
    fields = EmailMessage(policy=SMTP)
    fields.set_content(f"Feedback-Type: abuse\r\nUser-Agent: DemoFBL/1.0\r\nVersion: 1\r\n"
                       f"Original-Rcpt-To: <{rcpt}>\r\nSource-IP: 127.0.0.1\r\n")
    fields.replace_header("Content-Type", "message/feedback-report")
    report.attach(fields)
    original = EmailMessage(policy=SMTP)
    original.set_content(delivered, maintype="message", subtype="rfc822", cte="8bit")
    report.attach(original)
    return report.as_bytes()


def complaint_step(n: int, postfix, sink: SmtpSink, config: Path, env: dict) -> None:
    """A receiver complains about one of alice's messages: the ARF report is
    piped to ``outpost feedback`` (as an alias or pipe transport would) and
    attributed to the identity that sent it through the message's X-Outpost-ID."""
    title(n, "a receiver's feedback loop complains about one of alice's messages")
    before = len(sink.messages)
    r = send(postfix.submission_port, login="alice@example.com", password="secret-pw",
             mail_from="alice@example.com", rcpt_tos=["carol@dest.example"],
             message=build_message("Alice <alice@example.com>", "carol@dest.example",
                                   subject="Our newsletter"))
    outcome(r)
    if not r.accepted:
        return
    delivered = sink.wait_for(before + 1, timeout=20)[-1]
    print(f"   carol's provider sends an ARF report with the delivered copy "
          f"(X-Outpost-ID {delivered.headers('X-Outpost-ID')[0][:24]}…) to the abuse address;")
    print(f"   the alias pipes it to Outpost:  {DIM}$ outpost feedback < report.eml{RESET}")
    fb = subprocess.run([sys.executable, "-m", "outpost", "feedback", "-c", str(config)],
                        input=arf_report(delivered.data, "carol@dest.example"), env=env,
                        capture_output=True, timeout=60)
    colour = GREEN if fb.returncode == 0 else RED
    print(f"     {colour}{(fb.stdout or fb.stderr).decode(errors='replace').strip()}{RESET}"
          f"  (exit {fb.returncode})")
    print(f"   {DIM}$ outpost feedback list{RESET}")
    listed = subprocess.run([sys.executable, "-m", "outpost", "feedback", "list", "-c", str(config)],
                            env=env, capture_output=True, text=True, timeout=30)
    print(textwrap.indent((listed.stdout or listed.stderr).rstrip(), "     "))
    print(f"   {DIM}(lock.after_complaints, 3 in a day by default, locks the identity and "
          f"reports it to the abuse desk){RESET}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mta", default="postfix", choices=["postfix", "sendmail"])
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("make demo runs a private Postfix and must run as root", file=sys.stderr)
        return 1

    work = Path(tempfile.mkdtemp(prefix="outpost-demo-"))
    work.chmod(0o755)
    secret = work / "secret"
    secret.write_bytes(new_secret())
    secret.chmod(0o600)
    config = work / "outpost.yaml"
    metrics_port = free_port()
    panel_port = free_port()
    panel_password = secrets.token_urlsafe(9)
    sink = SmtpSink().start()
    abuse_desk = SmtpSink().start()
    config.write_text(f"secret_file: {secret}\nstore: sqlite:///{work}/state.db\n"
                      f"metrics: {{listen: '127.0.0.1:{metrics_port}'}}\n"
                      f"reports: {{spool_dir: {work}/reports, poll_interval: 0.5, "
                      f"smtp: {{host: 127.0.0.1, port: {abuse_desk.port}}}, listener_auth: none}}\n"
                      f"feedback: {{spool_dir: {work}/feedback}}\n"
                      f"panel: {{listen: '127.0.0.1:{panel_port}', users: [{{name: demo, role: operator, "
                      f"password_hash: '{hash_password(panel_password)}'}}]}}\n"
                      + CONFIG)

    mta_class = PostfixInstance if args.mta == "postfix" else SendmailInstance
    postfix = mta_class(work / args.mta, sink_port=sink.port)
    env = dict(os.environ)
    outpost = MilterProcess([sys.executable, "-m", "outpost", "run", "-c", str(config),
                             "--socket", "{socket}", "--workers", "2"],
                            postfix.milter_socket, env=env, log_path=work / "outpost.log")
    panel = None
    try:
        print(f"{BOLD}Outpost demo{RESET} {DIM}(work directory {work}){RESET}")
        postfix.build()
        postfix.add_sasl_user("alice@example.com", "secret-pw")
        outpost.start()
        postfix.start()
        print(f"   {args.mta.capitalize()} submission on 127.0.0.1:{postfix.submission_port}, IP relay on "
              f"127.0.0.1:{postfix.relay_port}, Outpost on {postfix.milter_socket},\n"
              f"   destination (SMTP sink) on 127.0.0.1:{sink.port}.  Configuration:")
        print(textwrap.indent(CONFIG, "     " + DIM) + RESET, end="")

        title(1, "alice authenticates (SMTP AUTH) and sends a message")
        r = send(postfix.submission_port, login="alice@example.com", password="secret-pw",
                 mail_from="alice@example.com", rcpt_tos=["bob@dest.example"],
                 message=build_message("Alice <alice@example.com>", "bob@dest.example",
                                       subject="Lunch on Friday?"))
        outcome(r)
        if r.accepted:
            arrived(sink, 1)
            token = sink.messages[-1].headers("X-Outpost-ID")[0]
            print(f"   {DIM}$ outpost whois {token[:24]}…{RESET}")
            who = subprocess.run([sys.executable, "-m", "outpost", "whois", "-c", str(config), token],
                                 env=env, capture_output=True, text=True, timeout=30)
            print(textwrap.indent(who.stdout.rstrip(), "     "))

        title(2, "an unknown server (127.0.0.99) tries to relay")
        r = send(postfix.relay_port, source_address="127.0.0.99", mail_from="promo@example.com",
                 rcpt_tos=["victim@dest.example"])
        outcome(r)

        title(3, "a PHP script on the web farm (127.0.0.77) forges Outpost's headers")
        forged = build_message("shop@example.com", "customer@dest.example", subject="Your order",
                               headers={"X-Outpost-User": "someone-else",
                                        "X-Outpost-ID": "forged-token",
                                        "X-Originating-IP": "[10.0.0.1]",
                                        "X-PHP-Originating-Script": "1042:wp-mail.php"})
        print("   sent with: X-Outpost-User: someone-else, X-Outpost-ID: forged-token,\n"
              "              X-Originating-IP: [10.0.0.1], X-PHP-Originating-Script: 1042:wp-mail.php")
        r = send(postfix.relay_port, source_address="127.0.0.77", mail_from="shop@example.com",
                 rcpt_tos=["customer@dest.example"], message=forged)
        outcome(r)
        if r.accepted:
            arrived(sink, 2)
            print(f"   {DIM}(forged copies removed; the identity 1042 comes from the PHP header, "
                  f"which is removed too){RESET}")

        title(4, "alice's account sends spam")
        r = send(postfix.submission_port, login="alice@example.com", password="secret-pw",
                 mail_from="alice@example.com", rcpt_tos=["friend@dest.example"], message=SPAM)
        outcome(r)
        try:
            [report] = abuse_desk.wait_for(1, timeout=30)
        except AssertionError:
            print(f"   {RED}no abuse report arrived{RESET}")
        else:
            rep = report.message
            print(f"   the abuse desk ({rep['To']}) received an ARF report (RFC 5965):")
            print(f"     Subject: {rep['Subject']}")
            human, feedback, original = rep.get_payload()[:3]
            for line in human.get_content().splitlines()[:22]:
                print(f"     > {line}")
            print("     (message/feedback-report part:)")
            fields = feedback.get_payload()[0] if feedback.is_multipart() else feedback
            for name, value in fields.items():
                print(f"     | {name}: {value}")
            print(f"     (and the original message as {original.get_content_type()})")

        volume_burst("4b", postfix, sink, abuse_desk)

        title(5, "the abuse desk looks at the last hour (every worker's counts, from the store)")
        print(f"   {DIM}$ outpost stats{RESET}")
        deadline = time.monotonic() + 15                 # workers add their counts every 2 s
        while True:
            stats = subprocess.run([sys.executable, "-m", "outpost", "stats", "--json", "-c", str(config)],
                                   env=env, capture_output=True, text=True, timeout=30)
            if stats.returncode != 0 or json.loads(stats.stdout)["last_hour"]["messages"] >= 4 \
                    or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        stats = subprocess.run([sys.executable, "-m", "outpost", "stats", "-c", str(config)],
                               env=env, capture_output=True, text=True, timeout=30)
        print(textwrap.indent((stats.stdout or stats.stderr).rstrip(), "     "))

        url = f"http://127.0.0.1:{metrics_port}/metrics"
        title(6, f"the metrics page for Prometheus ({DIM}metrics: {{listen: 127.0.0.1:{metrics_port}}}{RESET}{BOLD})")
        print(f"   {DIM}$ curl -s {url} | grep -v '^#'{RESET}   (excerpt, summed over both workers)")
        try:
            page = metrics_page(url, 4)
        except OSError as exc:
            print(f"   {RED}no metrics page: {exc}{RESET}")
        else:
            for line in page.splitlines():
                if line.startswith(METRICS_SHOWN):
                    print(f"     {line}")

        complaint_step(7, postfix, sink, config, env)

        print(f"\n{BOLD}Outpost's log (one line per message):{RESET}")
        for line in outpost.log().splitlines():
            if "outpost.message" in line:
                print("   " + line.split("outpost.message: ", 1)[-1])

        panel_url = f"http://127.0.0.1:{panel_port}"
        title(8, "the web panel (outpost panel) on the same store")
        panel_log = open(work / "panel.log", "wb")
        panel = subprocess.Popen([sys.executable, "-m", "outpost", "panel", "-c", str(config)],
                                 env=env, stdout=panel_log, stderr=subprocess.STDOUT)
        try:
            entries = panel_entries(panel_url, panel_password)
        except (OSError, AttributeError) as exc:
            print(f"   {RED}the panel does not answer: {exc}{RESET}")
        else:
            print(f"   {BOLD}{panel_url}/{RESET}  log in as {BOLD}demo{RESET} / {BOLD}{panel_password}{RESET}"
                  f" (operator)\n   its decision log holds {entries} messages from both workers")
            if sys.stdin.isatty():
                input("   press Enter to stop the demo (Postfix, Outpost and the panel)… ")
        return 0
    finally:
        if panel is not None:
            panel.terminate()
            try:
                panel.wait(10)
            except subprocess.TimeoutExpired:
                panel.kill()
                panel.wait(10)
        outpost.stop(graceful=True, timeout=40)
        postfix.cleanup()
        sink.stop()
        abuse_desk.stop()
        if args.keep:
            print(f"\n(kept {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)
        time.sleep(0.1)


if __name__ == "__main__":
    raise SystemExit(main())
