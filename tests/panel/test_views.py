"""The panel's views through Flask's test client: login, sessions, CSRF,
roles, audit lines, and what each page shows from the store."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from outpost.config import ConfigError, parse_config
from outpost.core.idtoken import Origin, TokenCodec
from outpost.store.base import DecisionEntry
from outpost.store.wrapper import StoreWrapper

from .conftest import PASSWORD, SECRET, csrf_of, log_in, panel_yaml


def text(resp) -> str:
    return resp.get_data(as_text=True)


def entry(n: int, **kw) -> DecisionEntry:
    base = dict(time=time.time() - 60 + n, action="accept", queue_id=f"4Q{n:04d}",
                user="webfarm", identity="alice@shop.example", token=f"tok{n}")
    base.update(kw)
    return DecisionEntry(**base)


# -- login and sessions ---------------------------------------------------------------------
def test_pages_need_a_login(app_panel) -> None:
    app, _ = app_panel
    c = app.test_client()
    for path in ("/", "/users", "/users/webfarm", "/blocked", "/identity/webfarm/a"):
        resp = c.get(path)
        assert resp.status_code == 302 and "/login" in resp.headers["Location"], path


def test_login_sets_a_strict_httponly_cookie_and_logout_ends_the_session(app_panel) -> None:
    app, _ = app_panel
    c = app.test_client()
    resp = log_in(c, "ops")
    assert resp.status_code == 302
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    page = c.get("/")
    assert page.status_code == 200 and "ops (operator)" in text(page)
    stolen = c.get_cookie("outpost_panel").value
    assert c.post("/logout", data={"csrf": csrf_of(text(page))}).status_code == 302
    other = app.test_client()
    other.set_cookie("outpost_panel", stolen)          # the old cookie no longer opens a session
    assert other.get("/").status_code == 302


def test_secure_cookies_option(make_app) -> None:
    app, _ = make_app(parse_config(panel_yaml(secure_cookies="true")))
    c = app.test_client()
    assert "Secure" in log_in(c, "ops").headers["Set-Cookie"]


def test_wrong_password_then_rate_limited(app_panel, caplog) -> None:
    app, _ = app_panel
    c = app.test_client()
    caplog.set_level(logging.INFO, "outpost.panel.audit")
    for _ in range(3):
        assert log_in(c, "ops", "wrong").status_code == 401
    assert log_in(c, "ops", "wrong").status_code == 429
    assert log_in(c, "ops").status_code == 429          # even the right password, for a while
    assert log_in(c, "nobody", "x").status_code == 429  # the client address is limited too
    assert "login failed" in caplog.text and "too many failures" in caplog.text


def test_login_needs_the_login_form_token(app_panel) -> None:
    app, _ = app_panel
    c = app.test_client()
    c.get("/login")
    assert c.post("/login", data={"name": "ops", "password": PASSWORD}).status_code == 403


def test_security_headers(operator) -> None:
    resp = operator.get("/")
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
    assert resp.headers["X-Frame-Options"] == "DENY" and resp.headers["Cache-Control"] == "no-store"


# -- actions: CSRF, roles, audit ---------------------------------------------------------------
def lock_form(client, path="/identity/webfarm/alice@shop.example"):
    return csrf_of(text(client.get(path)))


def test_operator_locks_and_unlocks_with_an_audit_line(operator, app_panel, caplog) -> None:
    _, panel = app_panel
    caplog.set_level(logging.INFO, "outpost.panel.audit")
    token = lock_form(operator)
    resp = operator.post("/lock", data={"csrf": token, "target": "webfarm/alice@shop.example",
                                        "action": "lock", "reason": "ticket 42", "duration": "1 hour",
                                        "back": "/identity/webfarm/alice@shop.example"})
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/identity/webfarm/alice@shop.example")
    lock = panel.store.get_lock("webfarm/alice@shop.example")
    assert lock is not None and lock.by == "operator" and "ticket 42" in lock.reason
    assert 3500 < lock.until - time.time() <= 3600
    assert "user=ops role=operator" in caplog.text and "action=lock" in caplog.text \
        and "'ticket 42'" in caplog.text
    page = text(operator.get("/identity/webfarm/alice@shop.example"))
    assert "Locked: ticket 42" in page and 'value="unlock"' in page
    operator.post("/lock", data={"csrf": token, "target": "webfarm/alice@shop.example",
                                 "action": "unlock", "reason": "resolved"})
    assert panel.store.get_lock("webfarm/alice@shop.example") is None
    assert "action=unlock" in caplog.text


def test_lock_needs_a_reason(operator, app_panel) -> None:
    _, panel = app_panel
    resp = operator.post("/lock", data={"csrf": lock_form(operator), "target": "webfarm",
                                        "action": "lock", "reason": "  "}, follow_redirects=True)
    assert "give a reason" in text(resp)
    assert panel.store.get_lock("user:webfarm") is None


def test_whole_user_lock_and_unknown_target(operator, app_panel) -> None:
    _, panel = app_panel
    token = lock_form(operator, "/users/webfarm")
    operator.post("/lock", data={"csrf": token, "target": "webfarm", "action": "lock",
                                 "reason": "compromised"})
    assert panel.store.get_lock("user:webfarm") is not None
    resp = operator.post("/lock", data={"csrf": token, "target": "nosuch/x", "action": "lock",
                                        "reason": "r"}, follow_redirects=True)
    assert "no user &#39;nosuch&#39;" in text(resp)


def test_post_without_csrf_token_is_refused(operator, app_panel, caplog) -> None:
    _, panel = app_panel
    caplog.set_level(logging.INFO, "outpost.panel.audit")
    for data in ({}, {"csrf": "forged"}):
        resp = operator.post("/lock", data={**data, "target": "webfarm/a", "action": "lock",
                                            "reason": "r"})
        assert resp.status_code == 403 and "CSRF" in text(resp)
    assert panel.store.list_locks() == []
    assert "csrf-refused" in caplog.text


def test_viewer_cannot_change_anything(viewer, app_panel, caplog) -> None:
    _, panel = app_panel
    caplog.set_level(logging.INFO, "outpost.panel.audit")
    page = text(viewer.get("/identity/webfarm/alice@shop.example"))
    assert 'value="lock"' not in page                       # no buttons shown
    token = csrf_of(page)
    assert viewer.post("/lock", data={"csrf": token, "target": "webfarm/alice@shop.example",
                                      "action": "lock", "reason": "r"}).status_code == 403
    assert viewer.post("/reports", data={"csrf": token, "action": "purge"}).status_code in (403, 404)
    assert viewer.post("/quarantine", data={"csrf": token, "action": "delete",
                                            "queue_id": "ABC"}).status_code == 403
    assert panel.store.list_locks() == []
    assert "refused: viewer" in caplog.text


# -- pages ---------------------------------------------------------------------------------------
def test_overview_charts_and_top_users(operator, app_panel) -> None:
    _, panel = app_panel
    panel.store.stat_add([("m", 7), ("a:accept", 5), ("a:reject", 2), ("b", 2), ("c:spam", 1),
                          ("u:webfarm", 7), ("ub:webfarm", 2)])
    page = text(operator.get("/"))
    assert page.count("<svg") == 2
    assert "accepted (5)" in page and "refused (2)" in page and "spam (1)" in page
    assert 'href="/users/webfarm"' in page
    assert "memory:" in page and "reports are off" in page
    assert "newest decision: none yet" in page
    panel.store.decision_add([entry(1)])
    assert "newest decision: none yet" not in text(operator.get("/"))


def test_users_search(operator) -> None:
    assert "webfarm" in text(operator.get("/users")) and "acme" in text(operator.get("/users"))
    page = text(operator.get("/users?q=other.example"))
    assert "acme" in page and "/users/webfarm" not in page
    page = text(operator.get("/users?q=192.0.2"))
    assert "acme" in page and "1 user(s)" in page
    assert operator.get("/users/nosuch").status_code == 404


def test_user_page_lists_identities_with_usage_and_locks(operator, app_panel) -> None:
    _, panel = app_panel
    panel.store.stat_add([("m", 2)], [("i:webfarm/bob@shop.example", 2)])
    panel.store.decision_add([entry(1), entry(2, action="reject", reason="spam", spam_class="spam")])
    panel.store.set_lock("webfarm/mallory@shop.example", "spam", None, by="operator")
    page = text(operator.get("/users/webfarm"))
    for ident in ("alice@shop.example", "bob@shop.example", "mallory@shop.example"):
        assert f"/identity/webfarm/{ident}" in page
    assert "alice@shop.example" in page and "shop.example" in page
    assert "messages 50/1h" in page              # the user's own limit windows


def test_identity_page_chart_usage_and_decisions(operator, app_panel) -> None:
    _, panel = app_panel
    panel.store.stat_add([("m", 3)], [("i:webfarm/alice@shop.example", 3)])
    panel.store.decision_add([entry(1, action="tempfail", reason="rate_limit",
                                    reply="451 4.7.1 too many")])
    page = text(operator.get("/identity/webfarm/alice@shop.example"))
    assert "<svg" in page and "messages (3)" in page and "limit 5/1h" in page
    assert "4Q0001" in page and "rate_limit" in page and "451 4.7.1 too many" in page
    assert operator.get("/identity/nosuch/x").status_code == 404


def test_blocked_log_search_and_every_decision(operator, app_panel) -> None:
    _, panel = app_panel
    panel.store.decision_add([entry(1), entry(2, action="reject", reason="spam", score=9.5,
                                              evidence=("bulk(4.0)",)),
                              entry(3, action="accept", quarantine="Outpost: spam", user="acme",
                                    identity="")])
    page = text(operator.get("/blocked"))
    assert "4Q0002" in page and "4Q0003" in page and "4Q0001" not in page
    assert "bulk(4.0)" in page and "9.5" in page and "held" in page
    page = text(operator.get("/blocked?q=acme"))
    assert "4Q0003" in page and "4Q0002" not in page
    assert "4Q0001" in text(operator.get("/blocked?all=1"))
    assert "<script" not in page


def test_whois_reveals_the_sender_of_a_token(operator, app_panel) -> None:
    _, panel = app_panel
    token = TokenCodec(SECRET).seal(Origin(user="webfarm", identity="alice@shop.example",
                                           client_ip="192.0.2.7", queue_id="4QABC", time=int(time.time())))
    panel.store.decision_add([entry(9, token=token, action="reject", reason="spam")])
    csrf = csrf_of(text(operator.get("/blocked")))
    page = text(operator.post("/whois", data={"csrf": csrf, "token": token}))
    assert "192.0.2.7" in page and "4QABC" in page and "Decision: reject spam" in page
    page = text(operator.post("/whois", data={"csrf": csrf, "token": "garbage"}))
    assert 'class="flash error"' in page


def test_html_in_logged_fields_is_escaped(operator, app_panel) -> None:
    _, panel = app_panel
    panel.store.decision_add([entry(1, action="reject", reason="<script>alert(1)</script>",
                                    identity="<b>x</b>")])
    page = text(operator.get("/blocked"))
    assert "<script>alert" not in page and "&lt;script&gt;" in page and "<b>x</b>" not in page


def test_reports_page_retry_and_purge(tmp_path, make_app) -> None:
    from outpost.effects.reports import BlockEvent, Spool, list_items
    cfg = parse_config(panel_yaml(spool=str(tmp_path / "spool")))
    app, panel = make_app(cfg)
    spool = Spool.from_settings(cfg.reports)
    spool.put(BlockEvent(kind="spam", action="reject", user="webfarm", identity="alice",
                         original=b"Subject: x\r\n\r\nbody\r\n"))
    c = app.test_client()
    log_in(c, "ops")
    page = text(c.get("/reports"))
    assert "webfarm/alice" in page and "new" in page
    [item] = list_items(spool)
    csrf = csrf_of(page)
    resp = c.post("/reports", data={"csrf": csrf, "action": "purge", "id": item.id},
                  follow_redirects=True)
    assert "1 report(s) deleted" in text(resp)
    assert list_items(spool) == []
    resp = c.post("/reports", data={"csrf": csrf, "action": "retry", "id": item.id},
                  follow_redirects=True)
    assert 'class="flash error"' in text(resp)          # gone: a clear error, no crash


def test_store_errors_give_a_503_page(make_app) -> None:
    from outpost.store.base import StoreError
    from outpost.store.memory import MemoryStore

    class Down(MemoryStore):
        def stat_read(self, period, count):
            raise StoreError("redis down")
    app, _ = make_app(store=Down())
    c = app.test_client()
    log_in(c, "ops")
    resp = c.get("/")
    assert resp.status_code == 503 and "redis down" in text(resp)


# -- configuration ----------------------------------------------------------------------------
@pytest.mark.parametrize("bad,needle", [
    ("listen: nowhere", "not HOST:PORT"),
    ("users: [{name: x, role: root, password_hash: '" + "scrypt$16$8$1$" + "A" * 22 + "==$"
     + "A" * 43 + "='}]", "role"),
    ("users: [{name: x, password_hash: plain}]", "password_hash"),
    ("colour: red", "unknown key"),
    ("quarantine_spool: spool/q", "absolute path"),
])
def test_bad_panel_blocks_are_refused(bad: str, needle: str) -> None:
    text_ = panel_yaml().split("panel:")[0] + "panel:\n  " + bad + "\n"
    with pytest.raises(ConfigError) as err:
        parse_config(text_)
    assert needle in str(err.value)


def test_no_panel_block() -> None:
    assert parse_config(panel_yaml().split("panel:")[0]).panel is None


def test_links_and_redirects_keep_the_url_prefix(app_panel) -> None:
    """Behind a proxy at /outpost (waitress' url_prefix sets SCRIPT_NAME)."""
    app, panel = app_panel
    c = app.test_client()
    base = "http://localhost/outpost"
    resp = c.get("/", base_url=base)
    assert resp.headers["Location"].startswith("/outpost/login")
    page = c.get("/login", base_url=base)
    assert 'href="/outpost/static/panel.css"' in text(page)
    resp = c.post("/login", data={"name": "ops", "password": PASSWORD, "csrf": csrf_of(text(page))},
                  base_url=base)
    assert resp.headers["Location"] == "/outpost/"
    page = text(c.get("/identity/webfarm/a", base_url=base))
    assert 'href="/outpost/users/webfarm"' in page and 'value="/identity/webfarm/a"' in page
    resp = c.post("/lock", data={"csrf": csrf_of(page), "target": "webfarm/a", "action": "lock",
                                 "reason": "r", "back": "/identity/webfarm/a"}, base_url=base)
    assert resp.headers["Location"] == "/outpost/identity/webfarm/a"


def test_back_never_leaves_the_panel(operator) -> None:
    csrf = lock_form(operator)
    for back in ("https://evil.example/", "//evil.example/x", "/\\evil.example", "/\t/evil.example",
                 "/\n/evil.example", " //evil.example"):
        resp = operator.post("/lock", data={"csrf": csrf, "target": "webfarm/a", "action": "reset",
                                            "reason": "r", "back": back})
        loc = resp.headers["Location"]              # a path of this host, never "//host" or a scheme
        assert loc.startswith("/") and not loc.startswith("//"), (back, loc)
        assert not any(c in loc for c in "\\\t\n :") or loc == "/", (back, loc)
    resp = operator.post("/lock", data={"csrf": csrf, "target": "webfarm/a", "action": "reset",
                                        "reason": "r", "back": "/identity/webfarm/Zoë Z"})
    assert resp.headers["Location"] == "/identity/webfarm/Zo%C3%AB%20Z"


def test_users_list_shows_the_fullest_limit(operator, app_panel) -> None:
    from outpost.store.base import Bucket
    _, panel = app_panel
    assert "0/50 messages 50/1h" in text(operator.get("/users"))
    panel.store.hit([Bucket("rl:user:webfarm:msg:3600", 50, 3600.0, cost=40, label="50/1h")])
    page = text(operator.get("/users"))
    assert "40/50 messages 50/1h" in page and 'value="40"' in page


def test_locks_page_lists_and_unlocks(operator, app_panel) -> None:
    _, panel = app_panel
    panel.store.set_lock("webfarm/bob@shop.example", "spam", 3600.0)
    panel.store.set_lock("user:acme", "compromised", None, by="operator")
    page = text(operator.get("/locks"))
    assert "webfarm/bob@shop.example" in page and "user:acme" in page and "until unlocked" in page
    operator.post("/lock", data={"csrf": csrf_of(page), "target": "acme", "action": "unlock",
                                 "reason": "fixed", "back": "/locks"})
    assert panel.store.get_lock("user:acme") is None
    assert panel.store.get_lock("webfarm/bob@shop.example") is not None


def test_a_lock_duration_the_form_does_not_offer_is_refused(operator, app_panel) -> None:
    _, panel = app_panel
    token = lock_form(operator)
    resp = operator.post("/lock", data={"csrf": token, "target": "webfarm/alice@shop.example",
                                        "action": "lock", "reason": "r", "duration": "1 yaer"})
    assert resp.status_code == 400
    assert panel.store.get_lock("webfarm/alice@shop.example") is None


def test_concurrent_wrong_logins_are_counted_atomically(tmp_path, make_app, config) -> None:
    # a real SQLite store; the unknown name is checked against a full-cost
    # scrypt hash (~0.1 s), so every thread is inside its check at once:
    # counting after the check let all of them through
    from outpost.store.sqlite import SqliteStore
    store = SqliteStore(str(tmp_path / "outpost.db"), config.store_settings)
    app, _ = make_app(store=store)
    clients = [app.test_client() for _ in range(8)]
    tokens = [csrf_of(c.get("/login").get_data(as_text=True)) for c in clients]
    start = threading.Barrier(len(clients))
    codes: list[int] = []

    def attempt(c, token: str) -> None:
        start.wait(timeout=10)
        codes.append(c.post("/login", data={"name": "nobody", "password": "wrong",
                                            "csrf": token}).status_code)
    threads = [threading.Thread(target=attempt, args=ct) for ct in zip(clients, tokens)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(codes) == [401] * 3 + [429] * 5        # login_attempts: 3
    store.close()


class CountingStore(StoreWrapper):
    """Counts the decision-log entries asked for and returned."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.asked = self.read = 0

    def decision_read(self, limit: int, offset: int = 0):
        got = super().decision_read(limit, offset)
        self.asked += limit
        self.read += len(got)
        return got


def test_a_page_reads_at_most_page_read_entries_of_the_log(operator, app_panel) -> None:
    from outpost.panel.data import PAGE, PAGE_READ
    _, panel = app_panel
    n = 3 * PAGE_READ
    # oldest first: the refusal 4Q0005 is beyond the first PAGE_READ entries
    panel.store.decision_add([entry(i, action="reject" if i == 5 else "accept",
                                    reason="spam" if i == 5 else "")
                              for i in range(1, n + 1)])
    counting = panel.store = CountingStore(panel.store)
    csrf = csrf_of(text(operator.get("/blocked")))
    requests = [lambda: operator.get("/blocked"), lambda: operator.get("/blocked?all=1"),
                lambda: operator.get("/blocked?q=nothing-matches"),
                lambda: operator.get(f"/blocked?from={2 * PAGE_READ}"),
                lambda: operator.get("/users/webfarm"),
                lambda: operator.get("/identity/webfarm/alice@shop.example"),
                lambda: operator.post("/whois", data={"csrf": csrf, "token": "x"})]
    for request in requests:
        counting.asked = counting.read = 0
        assert request().status_code == 200
        assert 0 < counting.read <= counting.asked <= PAGE_READ
    page = text(operator.get("/blocked?all=1"))
    assert f"4Q{n:04d}" in page and f"4Q{n - 2 * PAGE + 1:04d}" in page
    assert f"4Q{n - 2 * PAGE:04d}" not in page and f"from={2 * PAGE}" in page
    page = text(operator.get("/blocked"))                 # refusals only: none in the newest
    assert "0 found" in page and f"from={PAGE_READ}" in page
    page = text(operator.get(f"/blocked?from={2 * PAGE_READ}"))
    assert "4Q0005" in page
    page = text(operator.get(f"/blocked?from={n}"))
    assert "0 found" in page and ">older<" not in page     # the end of the log


def test_quarantine_actions_go_through_the_request_directory(tmp_path, make_app) -> None:
    # panel.quarantine_spool: the release is asked of the root side
    # (outpost quarantine apply), answered here as that side would
    from outpost.effects.quarantine import PostfixQuarantine, apply_requests
    spool = tmp_path / "q"
    app, _ = make_app(parse_config(panel_yaml(postfix_config=str(tmp_path / "no-postfix"),
                                              quarantine_spool=str(spool))))
    c = app.test_client()
    log_in(c, "ops")
    csrf = csrf_of(text(c.get("/locks")))
    answered: list = []

    def root_side() -> None:
        while not answered:
            try:
                answered.extend(apply_requests(str(spool), PostfixQuarantine(str(tmp_path / "no-postfix"))))
            except FileNotFoundError:
                pass
    t = threading.Thread(target=root_side)
    t.start()
    resp = c.post("/quarantine", data={"csrf": csrf, "action": "release", "queue_id": "ABCDEF123",
                                       "reason": "ticket 1"}, follow_redirects=True)
    t.join(30)
    assert [name for name, _ in answered] == ["release.ABCDEF123"]
    assert "no-postfix" in text(resp)           # postsuper's own error, shown to the operator
