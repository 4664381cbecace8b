"""The panel's Flask application: login, sessions, CSRF, roles, the pages
and the operator actions.  :func:`create_app` builds it for waitress
(:mod:`.serve`) or a test client.

Security (docs/panel.rst, "Security"):

* accounts and roles come from ``panel.users`` (scrypt hashes); a viewer
  reads, an operator also changes state;
* sessions live in this process (the cookie holds a random id, signed):
  logging out or restarting ends them; a session ends ``session_lifetime``
  after login; the cookie is HttpOnly, SameSite=Strict, and Secure with
  ``panel.secure_cookies``;
* every POST carries the session's CSRF token (403 without it);
* failed logins are limited per client address and per account name (429);
* every action writes one audit line (logger ``outpost.panel.audit``: who,
  role, what, target, reason, result);
* pages show only what Outpost decided and stamped, never a message body.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
import threading
import time
import urllib.parse
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Optional

from flask import Flask, abort, flash, g, redirect, render_template, request, session, url_for

from ..config import Config
from ..core.headers import clean
from ..state_commands import TargetError
from ..store.base import StoreError
from .auth import LoginLimiter, verify_login
from .data import Panel, clock, span
from .settings import PanelSettings

audit = logging.getLogger("outpost.panel.audit")
log = logging.getLogger("outpost.panel")

#: Sessions kept at most (the oldest end first).
MAX_SESSIONS = 1000
#: Longest reason an operator may give.
MAX_REASON = 200
#: Lock durations offered: label -> seconds (None: until unlocked).
LOCK_DURATIONS = {"1 hour": 3600.0, "1 day": 86400.0, "7 days": 7 * 86400.0, "until unlocked": None}


@dataclass
class PanelSession:
    user: str
    csrf: str
    started: float


class Sessions:
    """The logged-in sessions of this process, by random id."""

    def __init__(self, lifetime: float, clock: Callable[[], float] = time.time) -> None:
        self.lifetime = lifetime
        self._clock = clock
        self._mutex = threading.Lock()
        self._by_id: OrderedDict[str, PanelSession] = OrderedDict()

    def new(self, user: str) -> str:
        sid = secrets.token_urlsafe(32)
        with self._mutex:
            self._by_id[sid] = PanelSession(user, secrets.token_urlsafe(32), self._clock())
            while len(self._by_id) > MAX_SESSIONS:
                self._by_id.popitem(last=False)
        return sid

    def get(self, sid: object) -> Optional[PanelSession]:
        if not isinstance(sid, str):
            return None
        with self._mutex:
            s = self._by_id.get(sid)
            if s is not None and s.started + self.lifetime <= self._clock():
                del self._by_id[sid]
                return None
            return s

    def end(self, sid: object) -> None:
        if isinstance(sid, str):
            with self._mutex:
                self._by_id.pop(sid, None)


def _reason(text: str) -> str:
    return clean(text or "", MAX_REASON)


def create_app(config: Config, panel: Panel, settings: Optional[PanelSettings] = None,
               now: Callable[[], float] = time.time) -> Flask:
    settings = settings or config.panel or PanelSettings()
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=secrets.token_bytes(32),
        SESSION_COOKIE_NAME="outpost_panel",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=settings.secure_cookies,
        MAX_CONTENT_LENGTH=64 * 1024,
        MAX_FORM_MEMORY_SIZE=64 * 1024,
    )
    sessions = Sessions(settings.session_lifetime, now)
    limiter = LoginLimiter(settings.login_attempts, settings.login_window)
    app.extensions["outpost_panel"] = {"panel": panel, "sessions": sessions, "limiter": limiter}
    app.jinja_env.globals.update(clock=clock_text, span=span, durations=list(LOCK_DURATIONS),
                                 has_reports=config.reports is not None,
                                 has_quarantine=bool(settings.postfix_config))
    app.jinja_env.filters["clock"] = clock

    def account():
        s: Optional[PanelSession] = g.get("panel_session")
        return settings.user(s.user) if s is not None else None

    def audit_line(action: str, target: str, reason: str, result: str,
                   level: int = logging.INFO) -> None:
        who = account()
        audit.log(level, "panel audit: user=%s role=%s ip=%s action=%s target=%s reason=%r result=%r",
                  who.name if who else "-", who.role if who else "-", request.remote_addr or "-",
                  action, clean(target, 320) or "-", reason, clean(result, 400))

    @app.before_request
    def guard():
        g.panel_session = sessions.get(session.get("sid"))
        if g.panel_session is not None and settings.user(g.panel_session.user) is None:
            sessions.end(session.get("sid"))            # the account left the configuration
            g.panel_session = None
        if request.method == "POST":
            expected = (g.panel_session.csrf if g.panel_session is not None
                        else session.get("pre_csrf") if request.endpoint == "login" else None)
            given = request.form.get("csrf", "")
            if not expected or not isinstance(expected, str) or \
                    not hmac.compare_digest(given.encode(), expected.encode()):
                audit_line("csrf-refused", request.path, "", "403", logging.WARNING)
                abort(403, "CSRF token missing or wrong: reload the page and try again")
        if request.endpoint in ("login", "static") or request.endpoint is None:
            return None
        if g.panel_session is None:
            back = request.full_path.rstrip("?") if request.method == "GET" else None
            return redirect(url_for("login", next=back))
        return None

    @app.after_request
    def headers(resp):
        resp.headers["Content-Security-Policy"] = (
            "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'")
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers["Referrer-Policy"] = "no-referrer"
        if request.endpoint != "static":
            resp.headers["Cache-Control"] = "no-store"
        return resp

    @app.context_processor
    def inject():
        s = g.get("panel_session")
        who = account()
        return {"me": who, "csrf": s.csrf if s is not None else session.get("pre_csrf", ""),
                "operator": who is not None and who.role == "operator"}

    def operator_only() -> None:
        who = account()
        if who is None or who.role != "operator":
            audit_line(request.endpoint or "-", request.path, "", "refused: viewer", logging.WARNING)
            abort(403, "this account may only view (role viewer)")

    @app.errorhandler(StoreError)
    def store_down(exc):
        log.warning("panel: store error: %s", exc)
        return render_template("error.html", code=503, message=f"store error: {exc}"), 503

    @app.errorhandler(403)
    @app.errorhandler(404)
    @app.errorhandler(400)
    @app.errorhandler(413)
    @app.errorhandler(429)
    def http_error(exc):
        return render_template("error.html", code=exc.code, message=exc.description), exc.code

    # -- login ----------------------------------------------------------------------------
    @app.route("/login", methods=["GET", "POST"])
    def login():
        if "pre_csrf" not in session:
            session["pre_csrf"] = secrets.token_urlsafe(32)
        error = ""
        status = 200
        if request.method == "POST":
            name = request.form.get("name", "")[:64]
            password = request.form.get("password", "")[:1024]
            client = "ip:" + (request.remote_addr or "-")
            keys = (client, "user:" + name)
            wait = limiter.blocked(*keys)
            if wait > 0:
                audit.warning("panel audit: login refused (too many failures): name=%r ip=%s",
                              clean(name, 64), request.remote_addr)
                abort(429, f"too many failed logins; try again in {span(wait)}")
            user = settings.user(name)
            # verify_login runs for an unknown name too (same time either way)
            if verify_login(password, user.password_hash if user else None) and user is not None:
                limiter.succeeded(*keys)
                session.clear()
                session["sid"] = sid = sessions.new(user.name)
                g.panel_session = sessions.get(sid)
                audit_line("login", user.name, "", "ok")
                return redirect(_back(request.args.get("next", "")))
            limiter.failed(*keys)
            audit.warning("panel audit: login failed: name=%r ip=%s", clean(name, 64),
                          request.remote_addr)
            error, status = "wrong name or password", 401
        return render_template("login.html", error=error), status

    @app.post("/logout")
    def logout():
        audit_line("logout", "", "", "ok")
        sessions.end(session.get("sid"))
        session.clear()
        return redirect(url_for("login"))

    # -- pages ----------------------------------------------------------------------------
    @app.get("/")
    def overview():
        return render_template("overview.html", o=panel.overview())

    @app.get("/users")
    def users():
        return render_template("users.html", u=panel.users(request.args.get("q", "")[:200],
                                                           _page()))

    @app.get("/users/<name>")
    def user(name: str):
        data = panel.user(name)
        if data is None:
            abort(404, f"no user '{name}' in the configuration")
        return render_template("user.html", d=data)

    @app.get("/identity/<user>/<path:ident>")
    def identity(user: str, ident: str):
        try:
            data = panel.identity(user, ident)
        except TargetError as exc:
            abort(404, str(exc))
        if data is None:
            abort(404, f"no user '{user}' in the configuration")
        return render_template("identity.html", d=data)

    @app.get("/locks")
    def locks():
        return render_template("locks.html", locks=panel.locks())

    @app.get("/blocked")
    def blocked():
        every = request.args.get("all") == "1"
        return render_template("blocked.html",
                               d=panel.decisions(request.args.get("q", "")[:200], not every, _page()),
                               whois=None)

    @app.post("/whois")
    def whois():
        token = request.form.get("token", "")[:500]
        result = panel.whois(token)
        audit_line("whois", token, "", result.get("error") or f"{result['user']}/{result['identity']}")
        return render_template("blocked.html", d=panel.decisions("", True, 1), whois=result)

    # -- operator actions -----------------------------------------------------------------
    @app.post("/lock")
    def lock_action():
        operator_only()
        from ..state_commands import lock, reset, unlock
        target = request.form.get("target", "")[:400]
        action = request.form.get("action", "")
        reason = _reason(request.form.get("reason", ""))
        back = request.form.get("back", "")
        if not reason:
            flash("give a reason", "error")
            return redirect(_back(back))
        who = account()
        try:
            if action == "lock":
                # the form's default when not given; a value it does not offer is refused,
                # never read as "until unlocked"
                label = request.form.get("duration") or "until unlocked"
                if label not in LOCK_DURATIONS:
                    abort(400, f"unknown lock duration {label!r}")
                duration = LOCK_DURATIONS[label]
                text = lock(config, panel.store, target, duration,
                            clean(f"{reason} (by {who.name} in the panel)", 300))
            elif action == "unlock":
                text, _code = unlock(config, panel.store, target)
            elif action == "reset":
                text = reset(config, panel.store, target)
            else:
                abort(400, "unknown action")
        except TargetError as exc:
            audit_line(action, target, reason, f"refused: {exc}", logging.WARNING)
            flash(str(exc), "error")
            return redirect(_back(back))
        except StoreError as exc:
            audit_line(action, target, reason, f"failed: store error: {exc}", logging.WARNING)
            raise
        audit_line(action, target, reason, text)
        flash(text, "ok")
        return redirect(_back(back))

    @app.get("/reports")
    def reports():
        spool = panel.spool()
        if spool is None:
            abort(404, "reports are switched off (reports: {enabled: false})")
        from ..effects.reports import list_items, overflow_counts
        return render_template("reports.html", items=list_items(spool),
                               overflow=overflow_counts(spool), state=panel.reports_state())

    @app.post("/reports")
    def reports_action():
        operator_only()
        spool = panel.spool()
        if spool is None:
            abort(404, "reports are switched off")
        from ..effects.reports import ReportError, purge, retry
        action = request.form.get("action", "")
        item = request.form.get("id", "").strip()[:100] or None
        reason = _reason(request.form.get("reason", ""))
        try:
            if action == "retry":
                text = f"{retry(spool, item)} report(s) due now"
            elif action == "purge":
                text = f"{purge(spool, item, None)} report(s) deleted"
            else:
                abort(400, "unknown action")
        except (ReportError, ValueError) as exc:
            audit_line("reports-" + action, item or "all", reason, f"refused: {exc}", logging.WARNING)
            flash(str(exc), "error")
            return redirect(url_for("reports"))
        audit_line("reports-" + action, item or "all", reason, text)
        flash(text, "ok")
        return redirect(url_for("reports"))

    @app.get("/quarantine")
    def quarantine():
        q = _quarantine()
        from ..effects.quarantine import QuarantineError
        try:
            held = q.list()
        except QuarantineError as exc:
            return render_template("quarantine.html", held=[], error=str(exc))
        return render_template("quarantine.html", held=held, error="")

    @app.post("/quarantine")
    def quarantine_action():
        operator_only()
        q = _quarantine()
        from ..effects.quarantine import QuarantineError
        action = request.form.get("action", "")
        qid = request.form.get("queue_id", "").strip()[:40]
        reason = _reason(request.form.get("reason", ""))
        try:
            if action == "release":
                q.release(qid)
            elif action == "delete":
                q.delete(qid)
            else:
                abort(400, "unknown action")
        except QuarantineError as exc:
            audit_line("quarantine-" + action, qid, reason, f"refused: {exc}", logging.WARNING)
            flash(str(exc), "error")
            return redirect(url_for("quarantine"))
        audit_line("quarantine-" + action, qid, reason, "ok")
        flash(f"{action}d {qid}", "ok")
        return redirect(url_for("quarantine"))

    def _quarantine():
        if not settings.postfix_config:
            abort(404, "no quarantine: set panel.postfix_config to the Postfix instance's directory")
        from ..effects.quarantine import PostfixQuarantine
        from ..training import DecisionSpool  # released: ham, deleted: spam (train --from-quarantine)
        return PostfixQuarantine(settings.postfix_config, DecisionSpool(config.quarantine))

    return app


def _page() -> int:
    try:
        return max(1, min(int(request.args.get("page", "1")), 100000))
    except ValueError:
        return 1


#: A path of this panel to return to (no scheme, host, backslash, blank or
#: control character: browsers drop tabs and newlines, "/\t/evil" is "//evil").
_LOCAL_PATH = re.compile(r"^/(?![/\\])[A-Za-z0-9/_.~%@!$&'()*+,;=:?-]*$")


def _back(target: str) -> str:
    """Where an action returns: a path of this panel (quoted: an identity may
    hold blanks or non-ASCII), else the overview."""
    target = urllib.parse.quote(target, safe="/_.~%@!$&'()*+,;=:?-")
    if _LOCAL_PATH.match(target) and len(target) <= 2000:
        return request.script_root + target
    return url_for("overview")


def clock_text(epoch: Optional[float]) -> str:
    return clock(epoch)
