"""Message statistics for ``outpost stats`` and ``outpost top``.

Each worker counts its messages in memory (a few dictionary updates per
message, after the reply has gone to the MTA) and a thread adds them to the
store every :data:`FLUSH_INTERVAL` seconds in one ``stat_add`` call, so the
counts of every worker and relay sharing the store add up.  The store keeps
them per minute for an hour and per hour for a day
(:data:`~outpost.store.base.STAT_PERIODS`).

Counter names (one schema, read by :func:`summary`):

==================  ==========================================================
``m``               messages with a final answer (accepted, refused, held)
``rc``              their recipients
``b``               messages refused (reject, tempfail, discard)
``q``               messages quarantined
``a:ACTION``        messages by action (``accept``, ``reject``, ``tempfail``,
                    ``discard``)
``c:CLASS``         messages by spam class (``ham``, ``unsure``, ``spam``,
                    ``unscannable``; scanned messages only)
``r:REASON``        refusals by reason (``rate_limit``, ``spam``, ``locked`` …)
``u:USER``          messages of a user; ``ur:USER`` its recipients,
                    ``ub:USER`` its refusals
``i:USER/IDENTITY`` messages of an identity (recent names: the last hour's
                    minute buckets only, at most ``max_stat_names`` a minute)
==================  ==========================================================

These counts live in the store and are meant for the command line and the
panel; the Prometheus counters of the adapter are separate.

The same recorder keeps what each answered message's :class:`DecisionEntry`
is made of (time, queue id, user, identity, action, reason, score, evidence,
X-Outpost-ID; never content) and adds the entries to the store's decision log
at the same flush (``outpost panel``'s recent decisions and blocked-message
log); the entries are cleaned and built there, on the flush thread, not in
the milter callback.  At most :data:`MAX_PENDING_DECISIONS` wait for a flush:
while the store fails the oldest are dropped and counted
(``decisions_dropped``, exported as ``outpost_decisions_dropped_total``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from typing import TYPE_CHECKING, NamedTuple, Optional, Union

from .core.headers import clean
from .core.types import Action, Decision, Message
from .store.base import DECISION_FIELD_MAX, DecisionEntry, Store, StoreError

if TYPE_CHECKING:
    from .spam.engine import Verdict

log = logging.getLogger("outpost.stats")

#: Seconds between two flushes of a worker's counts to the store.
FLUSH_INTERVAL = 2.0

_BLOCKS = (Action.REJECT, Action.TEMPFAIL, Action.DISCARD)

#: Most decision-log entries a process keeps for its next flush.
MAX_PENDING_DECISIONS = 5000


class Answered(NamedTuple):
    """What the decision-log entry of an answered message is made of, taken
    in the callback (references, no copies, none of the content); the entry
    itself is built at the flush (:meth:`entry`)."""

    time: float
    decision: Decision
    queue_id: str
    user: Optional[str]
    identity: str
    login: Optional[str]
    client_ip: Optional[str]
    sender: str
    recipients: int
    verdict: Optional["Verdict"]
    spam_class: Optional[str]
    token: str

    @classmethod
    def of(cls, msg: Message, decision: Decision, queue_id: str = "",
           when: Optional[float] = None) -> "Answered":
        return cls(time.time() if when is None else when, decision, queue_id or msg.queue_id,
                   msg.user_name, msg.identity, msg.login, msg.client_ip, msg.sender,
                   len(msg.recipients), msg.verdict, msg.spam_class, msg.token)

    def entry(self) -> DecisionEntry:
        """The decision-log entry (cleaned, bounded)."""
        decision, verdict = self.decision, self.verdict
        evidence = getattr(verdict, "evidence", ()) or ()
        score = getattr(verdict, "score", None)
        m = DECISION_FIELD_MAX
        # clean() written out at each text (no helper call per field: this
        # runs for every answered message on the flush thread).
        return DecisionEntry(
            time=self.time, action=decision.action.value,
            reason=clean(decision.reason, m) if decision.reason else "",
            queue_id=clean(self.queue_id, m) if self.queue_id else "",
            user=clean(self.user, m) if self.user else "",
            identity=clean(self.identity, m) if self.identity else "",
            login=clean(self.login, m) if self.login else "",
            client_ip=clean(self.client_ip, m) if self.client_ip else "",
            sender=clean(self.sender, m) if self.sender else "",
            recipients=self.recipients,
            score=round(float(score), 2) if score is not None else None,
            spam_class=clean(self.spam_class, m) if self.spam_class else "",
            evidence=tuple([clean(f"{e.name}({e.points:.1f})", m) for e in evidence[:5]]),
            token=clean(self.token, m) if self.token else "",
            reply=clean(str(decision.reply), m) if decision.reply else "",
            quarantine=clean(decision.quarantine, m) if decision.quarantine else "")


def decision_entry(msg: Message, decision: Decision, queue_id: str = "",
                   when: Optional[float] = None) -> DecisionEntry:
    """The decision-log entry of one answered message (cleaned, bounded)."""
    return Answered.of(msg, decision, queue_id, when).entry()


class StatsRecorder:
    """A process' counts not yet in the store (thread-safe)."""

    def __init__(self, store: Store, max_names: int = 5000) -> None:
        self.store = store
        self.max_names = max_names
        self._mutex = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._recent: Counter[str] = Counter()
        self._decisions: deque[Union[Answered, DecisionEntry]] = deque()   # entries kept after a failure
        self._failing = False
        self._dlog_failing = False
        #: decision-log entries dropped (store failing too long)
        self.decisions_dropped = 0
        #: flushes of the decision log that failed
        self.decision_errors = 0

    def record(self, msg: Message, decision: Decision, queue_id: str = "") -> None:
        """Count one message that got its final answer (``decision``) and
        keep what its decision-log entry is made of (built at the flush)."""
        action = decision.action
        if action is Action.CONTINUE:          # reset, aborted, closed: no answer
            return
        entry = Answered.of(msg, decision, queue_id)
        rcpts = len(msg.recipients)
        blocked = action in _BLOCKS
        user = msg.user_name
        with self._mutex:
            if len(self._decisions) >= MAX_PENDING_DECISIONS:
                self._decisions.popleft()
                self.decisions_dropped += 1
            self._decisions.append(entry)
            c = self._counts
            c["m"] += 1
            c["rc"] += rcpts
            c["a:" + action.value] += 1
            if blocked:
                c["b"] += 1
                c["r:" + (decision.reason or "-")] += 1
            if decision.quarantine:
                c["q"] += 1
            if msg.spam_class:
                c["c:" + msg.spam_class] += 1
            if user:
                c["u:" + user] += 1
                c["ur:" + user] += rcpts
                if blocked:
                    c["ub:" + user] += 1
                if msg.identity:
                    name = f"i:{user}/{msg.identity}"
                    if name in self._recent or len(self._recent) < self.max_names:
                        self._recent[name] += 1

    def flush(self) -> bool:
        """Add the counts to the store (one call), then the decision-log
        entries (another); on a store error they are kept for the next
        flush.  Returns False when the store failed."""
        logged = self._flush_decisions()
        return self._flush_counts() and logged

    def _flush_decisions(self) -> bool:
        with self._mutex:
            pending, self._decisions = list(self._decisions), deque()
        if not pending:
            return True
        try:
            entries = [e.entry() if isinstance(e, Answered) else e for e in pending]
        except Exception:                      # a bug: counted as lost, logged by _flush_logged
            with self._mutex:
                self.decisions_dropped += len(pending)
            raise
        try:
            self.store.decision_add(entries)
        except StoreError as exc:
            with self._mutex:
                self.decision_errors += 1
                kept: deque[Union[Answered, DecisionEntry]] = deque(entries[-MAX_PENDING_DECISIONS:])
                self.decisions_dropped += len(entries) - len(kept)
                for e in self._decisions:
                    if len(kept) >= MAX_PENDING_DECISIONS:
                        kept.popleft()
                        self.decisions_dropped += 1
                    kept.append(e)
                self._decisions = kept
                first, self._dlog_failing = not self._dlog_failing, True
            if first:
                log.warning("decision log not stored (kept for the next try): %s", exc)
            return False
        self._dlog_failing = False
        return True

    def _flush_counts(self) -> bool:
        with self._mutex:
            counts, recent = self._counts, self._recent
            if not counts:
                return True
            self._counts, self._recent = Counter(), Counter()
        try:
            self.store.stat_add(sorted(counts.items()), sorted(recent.items()))
        except StoreError as exc:
            with self._mutex:
                counts.update(self._counts)
                self._counts = counts
                for name, n in self._recent.items():
                    if name in recent or len(recent) < self.max_names:
                        recent[name] += n
                self._recent = recent
                first, self._failing = not self._failing, True
            if first:
                log.warning("message statistics not stored (kept for the next try): %s", exc)
            return False
        self._failing = False
        return True

    def run(self, stop: threading.Event, interval: float = FLUSH_INTERVAL) -> None:
        """Flush every ``interval`` seconds until ``stop`` is set, then once more."""
        while not stop.wait(interval):
            self._flush_logged()
        self._flush_logged()

    def _flush_logged(self) -> None:
        try:
            self.flush()
        except Exception:  # statistics never stop the worker
            with self._mutex:
                self.decision_errors += 1
            log.exception("message statistics flush failed")


# -- reading (outpost stats) ---------------------------------------------------------------

def summary(counts: dict[str, int], top: int = 10) -> dict:
    """The JSON-ready view of :meth:`Store.stat_read`'s sums."""
    def named(prefix: str) -> dict[str, int]:
        return {k[len(prefix):]: v for k, v in counts.items() if k.startswith(prefix)}

    def ranked(values: dict[str, int]) -> list[dict]:
        return [{"user": u, "count": n}
                for u, n in sorted(values.items(), key=lambda kv: (-kv[1], kv[0]))[:top] if n]

    users, rcpts, blocks = named("u:"), named("ur:"), named("ub:")
    return {
        "messages": counts.get("m", 0),
        "recipients": counts.get("rc", 0),
        "blocked": counts.get("b", 0),
        "quarantined": counts.get("q", 0),
        "actions": dict(sorted(named("a:").items())),
        "block_reasons": dict(sorted(named("r:").items(), key=lambda kv: (-kv[1], kv[0]))),
        "top_users_by_messages": ranked(users),
        "top_users_by_recipients": ranked(rcpts),
        "top_users_by_blocks": ranked(blocks),
    }


def recent_identities(counts: dict[str, int]) -> dict[str, int]:
    """``user/identity`` → messages, from the minute buckets' recent names."""
    return {k[2:]: v for k, v in counts.items() if k.startswith("i:")}


def format_summary(title: str, s: dict) -> str:
    lines = [f"{title}: {s['messages']} messages, {s['recipients']} recipients, "
             f"{s['blocked']} refused, {s['quarantined']} quarantined"]
    if s["actions"]:
        lines.append("  by action:  " + ", ".join(f"{a} {n}" for a, n in s["actions"].items()))
    if s["block_reasons"]:
        lines.append("  refused by: " + ", ".join(f"{r} {n}" for r, n in s["block_reasons"].items()))
    for key, what in (("top_users_by_messages", "messages"), ("top_users_by_recipients", "recipients"),
                      ("top_users_by_blocks", "refusals")):
        if s[key]:
            lines.append(f"  top users by {what}: "
                         + ", ".join(f"{e['user']} {e['count']}" for e in s[key]))
    return "\n".join(lines)

