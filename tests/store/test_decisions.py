"""The decision log and the per-bucket statistics series (``outpost panel``):
shared by every process using the store, newest first, bounded, expiring;
written by the workers' statistics flush, never on the reply path."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outpost.core.headers import clean
from outpost.core.types import Action, Decision, Message, Reply
from outpost.stats import MAX_PENDING_DECISIONS, Answered, StatsRecorder, decision_entry
from outpost.store import Store, StoreSettings
from outpost.store.base import DECISION_FIELD_MAX, DecisionEntry, StoreError
from outpost.store.memory import MemoryStore


def entry(n: int, **kw) -> DecisionEntry:
    return DecisionEntry(time=1000.0 + n, action=kw.pop("action", "accept"), queue_id=f"Q{n}",
                         user="webfarm", identity=f"id{n % 3}", **kw)


def test_log_is_shared_newest_first(make_store, backend) -> None:
    a = make_store()
    b = a if backend == "memory" else make_store()
    a.decision_add([entry(1), entry(2)])
    b.decision_add([entry(3, action="reject", reason="rate_limit", score=7.5,
                          evidence=("bulk(3.0)",), token="tok")])
    got = a.decision_read(10)
    assert [e.queue_id for e in got] == ["Q3", "Q2", "Q1"]
    assert got[0] == entry(3, action="reject", reason="rate_limit", score=7.5,
                           evidence=("bulk(3.0)",), token="tok")
    assert got[0].blocked and not got[1].blocked
    assert [e.queue_id for e in b.decision_read(2)] == ["Q3", "Q2"]


def test_log_keeps_the_newest_max_decisions(make_store) -> None:
    store = make_store(max_decisions=5)
    store.decision_add([entry(n) for n in range(4)])
    store.decision_add([entry(n) for n in range(4, 8)])
    assert [e.queue_id for e in store.decision_read(100)] == ["Q7", "Q6", "Q5", "Q4", "Q3"]


def test_log_pages_by_offset(make_store, monkeypatch, backend) -> None:
    store = make_store()
    store.decision_add([entry(n) for n in range(3)])      # one call: one score in Redis
    store.decision_add([entry(n) for n in range(3, 7)])
    assert [e.queue_id for e in store.decision_read(3, offset=2)] == ["Q4", "Q3", "Q2"]
    assert [e.queue_id for e in store.decision_read(10, offset=5)] == ["Q1", "Q0"]
    assert store.decision_read(10, offset=7) == []
    if backend in ("redis", "sentinel"):                  # a page over several chunks
        inner = getattr(store, "inner", store)
        monkeypatch.setattr(inner, "decision_chunk", 2)
        assert [e.queue_id for e in store.decision_read(4, offset=1)] == ["Q5", "Q4", "Q3", "Q2"]


def test_empty_log(store: Store) -> None:
    assert store.decision_read(50) == []
    store.decision_add([])
    assert store.decision_read(50) == []


def test_series_per_bucket(make_store) -> None:
    store = make_store()
    store.stat_add([("m", 2), ("a:accept", 2), ("u:webfarm", 2)], [("i:webfarm/a", 2)])
    rows = store.stat_series("m", 5, ["m", "a:accept", "i:webfarm/a", "u:none"])
    assert len(rows) == 5
    assert rows[0] == {"m": 2, "a:accept": 2, "i:webfarm/a": 2}   # the current minute first
    assert rows[1:] == [{}, {}, {}, {}]
    hours = store.stat_series("h", 24, ["m", "i:webfarm/a"])
    assert hours[0] == {"m": 2} and len(hours) == 24
    assert store.stat_series("m", 3, []) == [{}, {}, {}]


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_old_entries_expire() -> None:
    clock = Clock(1_000_000.0)
    store = MemoryStore(StoreSettings(decision_ttl=60.0), clock=clock)
    store.decision_add([entry(1)])
    clock.t += 30
    store.decision_add([entry(2)])
    clock.t += 31
    assert [e.queue_id for e in store.decision_read(10)] == ["Q2"]


def test_series_buckets_move_with_time() -> None:
    clock = Clock(1_000_000 * 3600.0)
    store = MemoryStore(StoreSettings(), clock=clock)
    store.stat_add([("m", 1)])
    clock.t += 120
    store.stat_add([("m", 5)])
    assert store.stat_series("m", 4, ["m"]) == [{"m": 5}, {}, {"m": 1}, {}]


def spam_verdict():
    class Ev:
        name, points = "bulk_fingerprint", 4.0

    class V:
        score, evidence = 9.25, (Ev(),)
    return V()


def test_recorder_writes_entries_at_flush_only() -> None:
    store = MemoryStore()
    rec = StatsRecorder(store)
    msg = Message(sender="a@example.com", user_name="webfarm", identity="alice\r\nx",
                  recipients=["r@example.net"], token="TOKEN", spam_class="spam",
                  verdict=spam_verdict())
    rec.record(msg, Decision(Action.REJECT, Reply("550", "5.7.1", "spam"), "spam"), "4XyZ")
    rec.record(msg, Decision(Action.CONTINUE))                # no answer: not logged
    assert store.decision_read(10) == []                     # nothing until the flush
    assert rec.flush()
    [got] = store.decision_read(10)
    assert (got.queue_id, got.action, got.reason, got.score, got.token, got.identity) == \
        ("4XyZ", "reject", "spam", 9.25, "TOKEN", "alice x")
    assert got.evidence == ("bulk_fingerprint(4.0)",) and got.reply == "550 5.7.1 spam"


def test_recorder_builds_entries_at_the_flush_not_in_the_callback(monkeypatch) -> None:
    """The fields are cleaned and the entry built on the flush thread: the
    callback that records the message does none of that work."""
    import outpost.stats as stats
    calls = []
    real = stats.clean
    monkeypatch.setattr(stats, "clean", lambda *a: calls.append(a) or real(*a))
    store = MemoryStore()
    rec = StatsRecorder(store)
    msg = Message(sender="a@example.com", user_name="webfarm", identity="alice\r\nx", token="T")
    rec.record(msg, Decision(Action.ACCEPT, reason="ok"), "4XyZ")
    assert calls == []
    msg.identity = "changed later"                         # the entry is the message as answered
    assert rec.flush() and calls
    [got] = store.decision_read(10)
    assert (got.queue_id, got.identity, got.user, got.token) == ("4XyZ", "alice x", "webfarm", "T")


class FailingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.fail = True

    def decision_add(self, entries) -> None:
        if self.fail:
            raise StoreError("down")
        super().decision_add(entries)


def test_recorder_keeps_entries_while_the_store_fails_and_bounds_them() -> None:
    store = FailingStore()
    rec = StatsRecorder(store)
    msg = Message(user_name="webfarm", identity="a")
    for n in range(MAX_PENDING_DECISIONS + 10):
        rec.record(msg, Decision(Action.ACCEPT), f"Q{n}")
    assert not rec.flush()
    assert rec.decision_errors == 1 and rec.decisions_dropped == 10
    assert store.stat_read("m", 1)["m"] == MAX_PENDING_DECISIONS + 10   # counts still stored
    store.fail = False
    assert rec.flush()
    got = store.decision_read(MAX_PENDING_DECISIONS + 100)
    assert len(got) == MAX_PENDING_DECISIONS and got[0].queue_id == f"Q{MAX_PENDING_DECISIONS + 9}"


def test_entry_fields_are_bounded() -> None:
    msg = Message(user_name="u" * 5000, identity="i", sender="s\x00" * 10)
    e = decision_entry(msg, Decision(Action.ACCEPT), "Q")
    assert len(e.user) <= 320 and "\x00" not in e.sender


_texts = st.text(max_size=40)


@settings(max_examples=300, deadline=None)
@given(time=st.floats(allow_nan=False, allow_infinity=False), action=_texts, reason=_texts,
       queue_id=_texts, user=_texts, identity=_texts, login=_texts, client_ip=_texts,
       sender=_texts, recipients=st.integers(0, 10**6),
       score=st.none() | st.floats(allow_nan=False, allow_infinity=False), spam_class=_texts,
       evidence=st.lists(_texts, max_size=5).map(tuple), token=_texts, reply=_texts,
       quarantine=_texts)
def test_entry_json_is_asdict_json(**kwargs) -> None:
    """to_json writes what ``json.dumps(asdict(entry))`` wrote (its rewrite
    without the deep copy), and from_json reads it back."""
    e = DecisionEntry(**kwargs)
    assert e.to_json() == json.dumps(dataclasses.asdict(e), separators=(",", ":"))
    assert DecisionEntry.from_json(e.to_json()) == e


def _old_entry(a: Answered) -> DecisionEntry:
    """``Answered.entry`` before clean() was written out per field (kept to compare)."""
    def text(value):
        return clean(value, DECISION_FIELD_MAX) if value else ""
    decision, verdict = a.decision, a.verdict
    evidence = getattr(verdict, "evidence", ()) or ()
    score = getattr(verdict, "score", None)
    return DecisionEntry(
        time=a.time, action=decision.action.value, reason=text(decision.reason),
        queue_id=text(a.queue_id), user=text(a.user),
        identity=text(a.identity), login=text(a.login), client_ip=text(a.client_ip),
        sender=text(a.sender), recipients=a.recipients,
        score=round(float(score), 2) if score is not None else None,
        spam_class=text(a.spam_class),
        evidence=tuple(text(f"{e.name}({e.points:.1f})") for e in evidence[:5]),
        token=text(a.token), reply=text(str(decision.reply)) if decision.reply else "",
        quarantine=text(decision.quarantine))


_odd = st.text(st.sampled_from("a \x00\n\u2028é"), max_size=400)


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(_odd | st.none(), min_size=11, max_size=11),
       action=st.sampled_from(list(Action)), reply=st.booleans(),
       evidence=st.none() | st.lists(st.tuples(_odd, st.floats(-100, 100)), max_size=7))
def test_entry_is_unchanged(texts, action, reply, evidence) -> None:
    """The entry built at the flush is the one the former helper-per-field
    code built, whatever the texts (controls, blanks, long)."""
    reason, qid, user, identity, login, ip, sender, cls, token, quarantine, reply_text = texts
    verdict = None if evidence is None else SimpleNamespace(
        score=1.234, evidence=[SimpleNamespace(name=n, points=p) for n, p in evidence])
    d = Decision(action, Reply("550", "5.7.1", reply_text or "no") if reply else None,
                 reason or "", quarantine=quarantine)
    a = Answered(1.5, d, qid or "", user, identity or "", login, ip, sender or "", 3,
                 verdict, cls, token or "")  # type: ignore[arg-type]
    assert a.entry() == _old_entry(a)


def test_entry_json_ignores_unknown_fields() -> None:
    text = entry(1).to_json().replace('{', '{"future":1,', 1)
    assert DecisionEntry.from_json(text) == entry(1)


@pytest.mark.parametrize("period,count", [("m", 0), ("h", 25)])
def test_series_bad_arguments(store: Store, period: str, count: int) -> None:
    with pytest.raises(ValueError):
        store.stat_series(period, count, ["m"])


def test_a_long_read_comes_in_pages_without_repeats_or_gaps(make_store, backend) -> None:
    """Redis reads the log a page at a time (``decision_chunk``); entries of
    one flush share a score, so the pages must not lose or repeat them."""
    store = make_store()
    if backend == "redis":
        getattr(store, "primary", store).decision_chunk = 2     # the backend behind its wrapper
    store.decision_add([entry(n) for n in range(7)])
    store.decision_add([entry(n) for n in range(7, 10)])
    got = [e.queue_id for e in store.decision_read(100)]
    assert got == [f"Q{n}" for n in range(9, -1, -1)]
    assert [e.queue_id for e in store.decision_read(5)] == ["Q9", "Q8", "Q7", "Q6", "Q5"]
