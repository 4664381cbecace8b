"""What the panel's pages show, read from the configuration and the shared
store (so a panel on one relay sees every relay of the cluster).  No Flask
here: each function returns plain data for a template."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

from ..config import Config
from ..core import keys
from ..core.keys import Target
from ..core.limits import windows as limit_windows
from ..state_commands import identity_target, locks_data, usage_data, windows
from ..stats import recent_identities, summary
from ..store.base import STAT_PERIODS, DecisionEntry, Store
from .charts import Series, bar_chart

#: Decision-log entries one page request reads at most (the log keeps
#: ``store_options.max_decisions``, 20 000 by default): the user, identity
#: and whois pages look at the newest this many, the decision list searches
#: this many per page from where the previous page stopped.
PAGE_READ = 1000
#: Rows a page of a list shows.
PAGE = 50

#: The overview's series: legend, css class, counter names summed.
TRAFFIC = (("accepted", "accept", ("a:accept",)),
           ("refused", "reject", ("a:reject", "a:discard")),
           ("tempfailed", "tempfail", ("a:tempfail",)),
           ("spam", "spam", ("c:spam",)))


def clock(epoch: Optional[float]) -> str:
    if not epoch:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def span(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    s = max(0, int(round(seconds)))
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60}m"
    if s >= 60:
        return f"{s // 60}m{s % 60}s"
    return f"{s}s"


def _labels(period: str, now: float, count: int) -> list[str]:
    width, _ = STAT_PERIODS[period]
    cur = int(now // width)
    fmt = "%H:%M"
    return [time.strftime(fmt, time.localtime((cur - i) * width)) for i in range(count)][::-1]


def traffic_chart(store: Store, period: str, title: str) -> object:
    count = STAT_PERIODS[period][1]
    names = [n for _, _, ns in TRAFFIC for n in ns]
    rows = store.stat_series(period, count, names)[::-1]           # oldest first
    series = [Series(legend, css, [sum(r.get(n, 0) for n in ns) for r in rows])
              for legend, css, ns in TRAFFIC]
    return bar_chart(title, _labels(period, store.now(), count), series)


@dataclass
class Panel:
    """The configuration and the shared store."""

    config: Config
    store: Store
    codec: Optional[object] = None          # TokenCodec for whois (None: no secret)
    codec_problem: str = ""
    users_by_name: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.users_by_name = {u.name: u for u in self.config.users}

    # -- overview -----------------------------------------------------------------------
    def overview(self) -> dict:
        hour = summary(self.store.stat_read("m", 60), 10)
        day = summary(self.store.stat_read("h", 24), 10)
        return {
            "minutes": traffic_chart(self.store, "m", "Messages per minute, last hour"),
            "hours": traffic_chart(self.store, "h", "Messages per hour, last day"),
            "hour": hour, "day": day,
            "store": self.store_state(),
            "reports": self.reports_state(),
            "locks": len(self.store.list_locks()),
        }

    def store_state(self) -> dict:
        """The store's URL, how long reading its newest decision took, and
        when that decision was made (the workers write every 2 s)."""
        started = time.monotonic()
        newest = self.store.decision_read(1)
        return {"url": self.store.url or self.config.store, "ok": True,
                "ms": round((time.monotonic() - started) * 1000, 1),
                "newest": clock(newest[0].time) if newest else "none yet",
                "max_decisions": self.config.store_settings.max_decisions}

    def spool(self):
        if self.config.reports is None:
            return None
        from ..effects.reports import Spool
        return Spool.from_settings(self.config.reports)

    def reports_state(self) -> Optional[dict]:
        spool = self.spool()
        if spool is None:
            return None
        from ..effects.reports import list_items, overflow_counts
        states: dict[str, int] = {}
        for item in list_items(spool):
            states[item.state] = states.get(item.state, 0) + 1
        used, cap = spool.usage()
        return {"path": spool.path, "states": dict(sorted(states.items())),
                "overflow": sum(n for _, n in overflow_counts(spool)), "bytes": used, "max_bytes": cap}

    # -- users --------------------------------------------------------------------------
    def users(self, query: str = "", page: int = 1) -> dict:
        q = query.strip().lower()
        users = self.config.users
        if q:
            users = tuple(u for u in users if q in u.name.lower()
                          or any(q in d for d in u.domains) or any(q in lg.lower() for lg in u.logins)
                          or any(q in str(n) for n in u.ips))
        hour = self.store.stat_read("m", 60)
        locked = {lk["key"] for lk in locks_data(self.store)}
        total = len(users)
        start = (max(page, 1) - 1) * PAGE
        shown = users[start:start + PAGE]
        limits = [limit_windows(u, Target(u.name)) for u in shown]
        flat = [w.bucket() for ws in limits for w in ws]
        states = iter(self.store.peek(flat)) if flat else iter(())
        rows = []
        for u, lw in zip(shown, limits):
            ws = windows(lw, [next(states) for _ in lw])
            nearest = max(ws, key=lambda w: w["used"] / w["limit"]) if ws else None
            rows.append({"name": u.name, "type": u.type, "domains": sorted(u.domains)[:3],
                         "more_domains": max(0, len(u.domains) - 3),
                         "messages": hour.get("u:" + u.name, 0), "blocked": hour.get("ub:" + u.name, 0),
                         "locked": keys.user_lock_key(u.name) in locked, "nearest": nearest,
                         "locked_identities": sum(1 for k in locked if k.startswith(u.name + "/"))})
        return {"rows": rows, "total": total, "page": max(page, 1),
                "pages": max(1, -(-total // PAGE)), "query": query}

    def user(self, name: str) -> Optional[dict]:
        user = self.users_by_name.get(name)
        if user is None:
            return None
        [usage] = usage_data(self.config, self.store, name)
        log = [e for e in self.store.decision_read(PAGE_READ) if e.user == name]
        recent = {k.partition("/")[2]: n for k, n in
                  recent_identities(self.store.stat_read("m", 60)).items()
                  if k.partition("/")[0] == name}
        locks = {lk["identity"]: lk for lk in locks_data(self.store)
                 if lk["user"] == name and lk["identity"]}
        ids: dict[str, dict] = {}

        def row(ident: str) -> dict:
            return ids.setdefault(ident, {"identity": ident, "last_hour": recent.get(ident, 0),
                                          "logged": 0, "blocked": 0, "spam": 0, "last_seen": None,
                                          "lock": locks.get(ident)})
        for ident in recent:
            row(ident)
        for ident in locks:
            row(ident)
        for e in log:
            if not e.identity:
                continue
            r = row(e.identity)
            r["logged"] += 1
            r["blocked"] += e.blocked
            r["spam"] += e.spam_class == "spam"
            r["last_seen"] = max(r["last_seen"] or 0.0, e.time)
        identities = sorted(ids.values(), key=lambda r: (-(r["last_seen"] or 0), r["identity"]))
        user_lock = self.store.get_lock(keys.user_lock_key(name))
        chart = bar_chart(f"Messages of {name} per hour, last day",
                          _labels("h", self.store.now(), 24),
                          _user_series(self.store, name))
        return {"user": user, "usage": usage["windows"], "identities": identities,
                "lock": user_lock, "chart": chart, "decisions": log[:20], "read": PAGE_READ,
                "networks": [str(n) for n in user.ips], "logins": list(user.logins),
                "domains": sorted(user.domains)}

    def identity(self, user_name: str, ident: str) -> Optional[dict]:
        if user_name not in self.users_by_name:
            return None
        which = identity_target(self.config, f"{user_name}/{ident}")
        user_name, ident = which.user, which.identity
        [usage] = usage_data(self.config, self.store, f"{user_name}/{ident}")
        key = keys.identity_key(user_name, ident)
        name = f"i:{user_name}/{ident}"
        minutes = [r.get(name, 0) for r in self.store.stat_series("m", 60, [name])][::-1]
        hourly = [w for w in usage["windows"] if w["what"] == "messages" and w["window"] <= 3600]
        limit = None
        if hourly:
            w = max(hourly, key=lambda w: w["window"])
            limit = (f"limit {w['label']}", w["limit"] * 60.0 / w["window"])
        chart = bar_chart(f"Messages of {user_name}/{ident} per minute, last hour",
                          _labels("m", self.store.now(), 60),
                          [Series("messages", "accept", minutes)],
                          limit=(f"{limit[0]} (per-minute share)", limit[1]) if limit else None)
        log = [e for e in self.store.decision_read(PAGE_READ)
               if e.user == user_name and e.identity == ident]
        return {"user": user_name, "identity": ident, "key": key, "usage": usage["windows"],
                "lock": self.store.get_lock(key), "chart": chart, "decisions": log[:50],
                "total_logged": len(log), "read": PAGE_READ, "last_hour": sum(minutes)}

    def locks(self) -> list[dict]:
        return locks_data(self.store)

    # -- decision log -------------------------------------------------------------------
    def decisions(self, query: str = "", blocked_only: bool = True, start: int = 0) -> dict:
        """The matching entries among the :data:`PAGE_READ` entries of the
        log from position ``start`` (0: the newest), at most ``2 * PAGE``;
        ``next`` is where the following page starts (None: the log ends)."""
        q = query.strip().lower()
        start = max(0, start)
        rows: list[DecisionEntry] = []
        read = self.store.decision_read(PAGE_READ, offset=start)
        end = start + len(read)
        for i, e in enumerate(read):
            if blocked_only and not e.blocked:
                continue
            if q and not _matches(e, q):
                continue
            rows.append(e)
            if len(rows) == PAGE * 2:
                end = start + i + 1
                break
        more = end < start + len(read) or len(read) == PAGE_READ
        return {"rows": rows, "start": start, "end": end, "next": end if more else None,
                "query": query, "blocked_only": blocked_only}

    def whois(self, token: str) -> dict:
        token = token.strip()
        if self.codec is None:
            return {"error": f"whois is not available: {self.codec_problem or 'no secret'}"}
        from ..core.idtoken import TokenError
        try:
            origin = self.codec.open(token)       # type: ignore[attr-defined]
        except TokenError as exc:
            return {"error": str(exc), "token": token}
        found = [e for e in self.store.decision_read(PAGE_READ) if e.token == token][:1]
        return {"token": token, "user": origin.user, "identity": origin.identity,
                "client_ip": origin.client_ip or "-", "queue_id": origin.queue_id or "-",
                "time": clock(origin.time), "decision": found[0] if found else None}


def _user_series(store: Store, name: str) -> list[Series]:
    names = ["u:" + name, "ub:" + name]
    rows = store.stat_series("h", 24, names)[::-1]
    return [Series("accepted", "accept", [max(0, r.get(names[0], 0) - r.get(names[1], 0)) for r in rows]),
            Series("refused", "reject", [r.get(names[1], 0) for r in rows])]


def _matches(e: DecisionEntry, q: str) -> bool:
    return any(q in (v or "").lower() for v in (
        e.queue_id, e.user, e.identity, e.login, e.client_ip, e.sender, e.reason, e.token,
        e.spam_class, e.reply, e.quarantine, " ".join(e.evidence)))
