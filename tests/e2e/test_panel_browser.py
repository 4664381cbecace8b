"""The operator's panel in a real browser (Debian's chromium driven by
Playwright), against a real Postfix -> Outpost (sqlite store, 2 workers) and
``outpost panel`` reading the same store:

- an operator logs in, finds a user, sees a message sent through Postfix
  appear in the decision log and in the charts, locks the identity, watches
  the next message refused (451 at end of DATA, in the blocked log), unlocks
  it and the next message passes;
- a viewer sees no buttons and a change it forges is refused (403);
- a POST without the CSRF token is refused (403), even for an operator;
- an operator releases a quarantined message from the hold queue (it then
  arrives), reverses a delivered message's X-Outpost-ID with whois, and sees
  the report spool.

The overview screenshot of the README (docs/_static/panel-overview.png) is
taken here: into the test's directory, or to refresh the README's copy::

    OUTPOST_PANEL_SCREENSHOT=docs/_static/panel-overview.png \\
        .venv/bin/python -m pytest tests/e2e/test_panel_browser.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import urllib.request
from pathlib import Path

import pytest

from outpost.panel.auth import hash_password
from tests.services.poll import wait_until
from tests.services.postfix import free_port
from tests.services.smtp import build_message, send

from .outpost_proc import Outpost

PASSWORD = "panel test password"
HASH = hash_password(PASSWORD, n=2 ** 10)       # cheap for the test; production uses 2**14

CONFIG = textwrap.dedent(f"""\
    hostname: relay.example.net
    report_abuse_to: abuse@example.net
    domains: [example.com]
    users:
      - name: webfarm
        type: ip
        ips: [203.0.113.0/28]
        domains: [example.com]
        identity_headers:
          - {{header: X-AuthUser}}
        limits: {{messages: ["20/1h"]}}
      - name: alice
        type: login
        logins: [alice@example.com]
        domains: [example.com]
      - name: holder
        type: login
        logins: [holder@example.com]
        domains: [example.com]
        spam: {{on_spam: quarantine}}
    quarantine: {{training_dir: TRAINING_DIR}}
    panel:
      postfix_config: POSTFIX_CONFIG
      users:
        - {{name: ops, role: operator, password_hash: "{HASH}"}}
        - {{name: desk, role: viewer, password_hash: "{HASH}"}}
    """)


@pytest.fixture(scope="module")
def outpost(postfix, tmp_path_factory):
    training = tmp_path_factory.mktemp("training")        # released messages kept for training
    proc = Outpost(postfix.milter_socket,
                   CONFIG.replace("POSTFIX_CONFIG", str(postfix.config_dir))
                   .replace("TRAINING_DIR", str(training))).start()
    proc.training = training
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def panel_url(outpost):
    port = free_port()
    log = open(outpost.dir / "panel.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "outpost", "panel", "-c", str(outpost.config_path),
                             "--listen", f"127.0.0.1:{port}"], env=outpost.proc.env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, (outpost.dir / "panel.log").read_text()
        try:
            with urllib.request.urlopen(url + "/login", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False
    try:
        wait_until(up, 30, "the panel answering")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        yield b
        b.close()


def log_in(browser, url: str, name: str):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15000)
    page.goto(url + "/")
    assert "/login" in page.url                      # every page needs a login
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("#whoami")
    return context, page


SPAM = (b"From: Holder <holder@example.com>\r\nTo: friend@dest.example\r\n"
        b"Subject: URGENT: claim your FREE prize now!!!\r\n\r\n"
        b"Dear friend,\r\n\r\nYou have been SELECTED to receive a FREE cash prize of $1,000,000!!!\r\n"
        b"Act now: click here to claim your money, limited time offer, 100% free, no risk.\r\n"
        b"Order now and earn extra income from home. Remove me: reply with REMOVE.\r\n")


def webfarm(postfix, identity: str):
    msg = build_message("web@example.com", "x@dest.example", headers={"X-AuthUser": identity})
    return send(postfix.relay_port, xclient={"ADDR": "203.0.113.5"}, mail_from="web@example.com",
                rcpt_tos=["x@dest.example"], message=msg)


def reload_until(page, text: str, what: str, timeout: float = 20.0) -> None:
    """Reload until the page shows ``text`` (the workers add their decisions
    to the store every 2 s, after the reply)."""
    def shown() -> bool:
        page.reload()
        return text in page.content()
    wait_until(shown, timeout, what, interval=0.3)


def test_operator_finds_a_user_sees_its_mail_locks_and_unlocks(browser, panel_url, postfix,
                                                                sink, outpost):
    context, page = log_in(browser, panel_url, "ops")
    try:
        assert page.inner_text("#whoami") == "ops (operator)"
        # find the user
        page.click("text=Users")
        page.fill("input[name=q]", "webfarm")
        page.click("form.search button")
        assert "1 user(s)" in page.content()
        page.click("table.users >> text=webfarm")
        assert page.url.endswith("/users/webfarm")
        # a message through the real Postfix appears in the log and the charts
        first = webfarm(postfix, "1001")
        assert first.accepted, first
        sink.wait_for(1)
        page.goto(f"{panel_url}/identity/webfarm/1001")
        reload_until(page, first.queue_id, "the message in the identity's decisions")
        assert "messages (1)" in page.inner_text("figure.chart figcaption")
        page.goto(panel_url + "/")
        reload_until(page, "accepted (1)", "the message in the overview chart")
        # lock the identity with a reason
        page.goto(f"{panel_url}/identity/webfarm/1001")
        page.fill("#lock-state input[name=reason]", "complaint 77")
        page.click("#lock-state button[value=lock]")
        assert "locked webfarm/1001" in page.inner_text("p.flash")
        assert "Locked: complaint 77" in page.inner_text("#lock-state")
        refused = webfarm(postfix, "1001")
        assert (refused.stage, refused.code) == ("end", 451), refused
        page.click("text=Locks")
        assert "webfarm/1001" in page.inner_text("table.locks")
        page.goto(panel_url + "/blocked?q=1001")
        reload_until(page, "suspended", "the refusal in the blocked log")
        assert "tempfail" in page.inner_text("table.log")
        # unlock: the next message passes
        page.goto(f"{panel_url}/identity/webfarm/1001")
        page.fill("#lock-state input[name=reason]", "customer cleaned up")
        page.click("#lock-state button[value=unlock]")
        assert "unlocked webfarm/1001" in page.inner_text("p.flash")
        again = webfarm(postfix, "1001")
        assert again.accepted, again
        page.goto(panel_url + "/")
        reload_until(page, "accepted (2)", "the refusal and the last message in the overview chart")
        assert "tempfailed (1)" in page.content()
        shot = Path(os.environ.get("OUTPOST_PANEL_SCREENSHOT") or outpost.dir / "panel-overview.png")
        page.screenshot(path=str(shot), full_page=False)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        context.close()


def test_viewer_cannot_change_anything_and_posts_need_the_csrf_token(browser, panel_url,
                                                                     outpost):
    context, page = log_in(browser, panel_url, "desk")
    try:
        page.goto(f"{panel_url}/identity/webfarm/2002")
        assert page.query_selector("button[value=lock]") is None     # no buttons for a viewer
        token = page.get_attribute("input[name=csrf]", "value")
        form = {"target": "webfarm/2002", "action": "lock", "reason": "x", "csrf": token}
        forged = context.request.post(f"{panel_url}/lock", form=form)
        assert forged.status == 403 and "only view" in forged.text()
    finally:
        context.close()
    context, page = log_in(browser, panel_url, "ops")
    try:
        no_token = context.request.post(f"{panel_url}/lock", form={
            "target": "webfarm/2002", "action": "lock", "reason": "x"})
        assert no_token.status == 403 and "CSRF" in no_token.text()
    finally:
        context.close()
    locks = subprocess.run([sys.executable, "-m", "outpost", "locks", "-c", str(outpost.config_path)],
                           capture_output=True, text=True, env=outpost.proc.env, timeout=60)
    assert "webfarm/2002" not in locks.stdout and locks.returncode == 0, locks
    audit = (outpost.dir / "panel.log").read_text()
    assert "refused: viewer" in audit and "csrf-refused" in audit


def test_release_from_quarantine_whois_and_reports(browser, panel_url, outpost, postfix, sink):
    held = send(postfix.submission_port, xclient={"LOGIN": "holder@example.com"},
                mail_from="holder@example.com", rcpt_tos=["friend@dest.example"], message=SPAM)
    assert held.accepted, held
    assert held.queue_id in postfix.hold_queue()
    ham = send(postfix.submission_port, xclient={"LOGIN": "alice@example.com"},
               mail_from="alice@example.com", rcpt_tos=["bob@dest.example"],
               message=build_message("alice@example.com", "bob@dest.example"))
    assert ham.accepted, ham
    [delivered] = sink.wait_for(1)
    [token] = delivered.headers("X-Outpost-ID")
    context, page = log_in(browser, panel_url, "ops")
    try:
        page.click("text=Quarantine")
        row = page.locator("tr", has_text=held.queue_id)
        assert "X-Outpost-Class: spam" in row.inner_text()
        row.locator("input[name=reason]").fill("false positive, ticket 9")
        row.locator("button[value=release]").click()
        assert f"released {held.queue_id}" in page.inner_text("p.flash")
        assert list((outpost.training / "released").glob(f"*-{held.queue_id}.eml"))   # kept as ham
        postfix.flush()
        got = sink.wait_for(2, timeout=30)
        assert any(m.headers("X-Outpost-Class") == ["spam"] for m in got)
        # the hold is in the blocked log; whois: a delivered message's token names its sender
        page.click("text=Blocked messages")
        reload_until(page, held.queue_id, "the held message in the blocked log")
        assert "held" in page.locator("tr", has_text=held.queue_id).inner_text()
        page.fill("input[name=token]", token)
        page.click("form.whois button")
        result = page.inner_text("#whois-result")
        assert "User alice, identity alice@example.com" in result and ham.queue_id in result
        # the report spool (the quarantine made a report event)
        page.click("text=Reports")
        assert "holder" in page.inner_text("table.log")
    finally:
        context.close()


def _as_user(name: str, code: str) -> subprocess.Popen:
    """``code`` run by the system Python as the user ``name`` (no root, no
    supplementary group), with only the Outpost sources on its path."""
    milter = str(Path(__file__).resolve().parents[2] / "milter")
    return subprocess.Popen(["setpriv", f"--reuid={name}", f"--regid={name}", "--clear-groups",
                             "/usr/bin/python3", "-c", textwrap.dedent(code)],
                            env={**os.environ, "PYTHONPATH": milter},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_release_by_the_unprivileged_panel_user(outpost, postfix, sink, tmp_path):
    # postsuper runs only as root: as the panel's user "outpost" a release
    # leaves a request that `outpost quarantine apply` (outpost-quarantine.path,
    # as root) applies; here the test (root) plays the path unit
    import pwd
    user = pwd.getpwnam("outpost")
    held = send(postfix.submission_port, xclient={"LOGIN": "holder@example.com"},
                mail_from="holder@example.com", rcpt_tos=["friend@dest.example"], message=SPAM)
    assert held.accepted and held.queue_id in postfix.hold_queue(), held
    spool = Path(tempfile.mkdtemp(prefix="outpost-quarantine-", dir="/tmp"))
    try:
        os.chown(spool, user.pw_uid, user.pw_gid)         # as the package's postinst makes it
        direct = _as_user("outpost", f"""
            from outpost.effects.quarantine import PostfixQuarantine, QuarantineError
            try:
                PostfixQuarantine({str(postfix.config_dir)!r}).release({held.queue_id!r})
            except QuarantineError as exc:
                print(exc)""")
        assert "superuser" in direct.communicate(timeout=30)[0]        # the problem
        asks = _as_user("outpost", f"""
            from outpost.effects.quarantine import PostfixQuarantine, QuarantineError, RequestQueue
            q = PostfixQuarantine("/nonexistent", requests=RequestQueue({str(spool)!r}, timeout=30))
            q.release({held.queue_id!r})
            print("released")""")

        def apply(name: str) -> bool:
            if not (spool / "requests" / name).exists():
                return False
            done = subprocess.run([sys.executable, "-m", "outpost", "quarantine", "apply",
                                   "--requests", str(spool), "--postfix-config",
                                   str(postfix.config_dir)], capture_output=True, text=True,
                                  timeout=30)
            assert f"{name}: " in done.stdout, done
            return True
        wait_until(lambda: apply(f"release.{held.queue_id}"), 30, "the release request")
        out, err = asks.communicate(timeout=30)
        assert asks.returncode == 0, err
        assert out == "released\n", out
        assert (spool / "requests").stat().st_uid == user.pw_uid
        assert not list((spool / "requests").iterdir()) and not list((spool / "results").iterdir())
        assert held.queue_id not in postfix.hold_queue()
        postfix.flush()
        wait_until(lambda: any(m.headers("X-Outpost-Class") == ["spam"] for m in sink.messages),
                   30, "the released message at the sink")
    finally:
        shutil.rmtree(spool, ignore_errors=True)

