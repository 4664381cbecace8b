"""Receivers' complaints (ARF, RFC 5965): parsing real-shaped reports as the
big mailbox providers send them (fixtures in ``tests/core/arf/``, with the
token placeholder ``{TOKEN}``), hostile input, and the counting and locking
of ``outpost feedback`` against a store."""

from __future__ import annotations

import base64
import io
import os
import time
from pathlib import Path

import pytest

from outpost.config import parse_config
from outpost.core.feedback import ReportError, attribute, count_complaint, parse_report, verified_original
from outpost.core.idtoken import Origin, TokenCodec
from outpost.feedback_command import EX_OK, Spool, handle, list_data, read_bounded
from outpost.store.memory import MemoryStore

from .conftest import CONFIG, SECRET

ARF = Path(__file__).parent / "arf"
ORIGIN = Origin(user="webfarm", identity="alice@example.com", client_ip="192.0.2.1",
                queue_id="4XyZ1234", time=1764580000)


def sample(name: str, token: str) -> bytes:
    return (ARF / name).read_bytes().replace(b"{TOKEN}", token.encode()).replace(b"\n", b"\r\n")


@pytest.fixture
def token(codec) -> str:
    return codec.seal(ORIGIN)


@pytest.mark.parametrize("name,feedback_type,agent,full", [
    ("rfc5965_full.eml", "abuse", "SomeGenerator/1.0", True),
    ("rfc5965_headers.eml", "fraud", "SomeGenerator/1.0", False),
    ("yahoo_like.eml", "abuse", "Yahoo!-Mail-Feedback/2.0", False),     # headers only, redacted
    ("aol_like.eml", "abuse", "AOL SComp", True),
    ("microsoft_jmrp.eml", "abuse", "Microsoft Junk Mail Reporting Program", True),
])
def test_provider_reports_are_attributed(codec, token, name, feedback_type, agent, full):
    report = parse_report(sample(name, token))
    assert report.arf
    assert report.feedback_type == feedback_type
    assert report.user_agent == agent
    assert report.tokens[0] == token
    assert report.full == full
    origin, why = attribute(report, codec)
    assert origin == ORIGIN and why == ""
    assert (verified_original(report, codec, origin) is not None) == full


def test_full_original_is_the_reported_message(codec, token):
    report = parse_report(sample("aol_like.eml", token))
    original = verified_original(report, codec, ORIGIN)
    assert original is not None
    assert b"claim your free prize" in original
    assert b"Subject: Your invoice 4711" in original


def test_a_token_quoted_in_a_plain_complaint(codec, token):
    # a human postmaster quoting the headers, quoted-printable with a soft break in the token
    raw = sample("quoted_text.eml", token)
    cut = raw.index(token.encode()) + 30
    raw = raw[:cut] + b"=\r\n" + raw[cut:]
    report = parse_report(raw)
    assert not report.arf and report.feedback_type == ""
    assert attribute(report, codec)[0] == ORIGIN


def test_the_reports_own_header_is_not_believed(codec, token):
    raw = b"X-Outpost-ID: " + token.encode() + b"\r\nSubject: hi\r\n\r\nno token here\r\n"
    report = parse_report(raw)
    assert report.tokens == ()
    assert attribute(report, codec) == (None, "no X-Outpost-ID in the report")


def test_forged_and_foreign_tokens_are_not_attributed(codec):
    forged = base64.urlsafe_b64encode(b"\x01" + os.urandom(80)).rstrip(b"=").decode()
    foreign = TokenCodec(b"another secret of sixteen bytes+").seal(ORIGIN)
    for token in (forged, foreign):
        origin, why = attribute(parse_report(sample("rfc5965_full.eml", token)), codec)
        assert origin is None
        assert "not made with this secret" in why


def test_a_forged_token_first_does_not_hide_a_good_one(codec, token):
    forged = base64.urlsafe_b64encode(b"\x01" + os.urandom(80)).rstrip(b"=").decode()
    raw = sample("rfc5965_full.eml", token).replace(
        b"X-Outpost-ID: ", b"X-Outpost-ID: " + forged.encode() + b"\r\nX-Outpost-ID: ", 1)
    report = parse_report(raw)
    assert report.tokens[:2] == (forged, token)
    assert attribute(report, codec)[0] == ORIGIN


# -- hostile input --------------------------------------------------------------------------

def test_over_max_size_is_refused_before_parsing(token):
    raw = sample("rfc5965_full.eml", token)
    with pytest.raises(ReportError, match="max_size"):
        parse_report(raw + b"x" * 5000, max_size=len(raw) + 4000)


def test_deep_nesting_is_refused_quickly():
    depth = 50_000
    raw = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
                   for i in range(depth))
    start = time.monotonic()
    with pytest.raises(ReportError, match="max_parts"):
        parse_report(raw, max_size=len(raw))
    assert time.monotonic() - start < 1.0


def test_many_empty_parts_are_refused():
    raw = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"--b\r\n\r\n" * 100_000
           + b"--b--\r\n")
    with pytest.raises(ReportError, match="boundary lines"):
        parse_report(raw, max_size=len(raw))


def test_garbage_is_a_report_without_tokens(codec):
    for raw in (b"", b"\x00\xff" * 1000, b"Content-Type: multipart/report\r\n\r\n--x\r\n",
                b"Content-Type: message/rfc822\r\n\r\n", b":\r\n\r\n\r\n"):
        assert attribute(parse_report(raw), codec)[0] is None


# -- counting and locking ---------------------------------------------------------------------

LOCKING = CONFIG.replace("lock: {after_limit_hits: 2,",
                         "lock: {after_complaints: 3, complaint_window: 1d, after_limit_hits: 2,")


def test_complaints_lock_the_identity_after_the_threshold():
    config = parse_config(LOCKING, "core.yaml")
    store = MemoryStore()
    other = Origin("webfarm", "bob@example.com", "", "Q2", 1)
    results = [count_complaint(config, store, ORIGIN) for _ in range(3)]
    assert [r.identity_count for r in results] == [1, 2, 3]
    assert [r.locked for r in results] == [(), (), ("webfarm/alice@example.com",)]
    lock = store.get_lock("webfarm/alice@example.com")
    assert lock is not None and lock.by == "complaints" and lock.reason == "3 complaints in 86400s"
    assert lock.until is not None                                 # lock.duration: 1h
    assert store.get_lock("webfarm/bob@example.com") is None
    assert store.get_lock("user:webfarm") is None
    counted = count_complaint(config, store, other)
    assert (counted.identity_count, counted.user_count, counted.locked) == (1, 4, ())


def test_user_threshold_and_monitor_mode():
    config = parse_config(LOCKING.replace("after_complaints: 3,",
                                          "after_complaints: 0, user_after_complaints: 2,"), "c.yaml")
    assert config.defaults.lock.after_complaints is None              # 0 = off
    store = MemoryStore()
    count_complaint(config, store, ORIGIN)
    got = count_complaint(config, store, Origin("webfarm", "bob@example.com", "", "Q3", 2))
    assert got.locked == ("user:webfarm",)
    assert store.get_lock("webfarm/alice@example.com") is None
    watched = Origin("watched", "eve@example.com", "", "Q4", 3)
    assert [count_complaint(config, store, watched).locked for _ in range(3)] == [(), (), ()]


def test_defaults_and_config_errors():
    config = parse_config(CONFIG, "core.yaml")
    lock = config.defaults.lock
    assert (lock.after_complaints, lock.user_after_complaints, lock.complaint_window) == (3, None, 86400)
    assert config.feedback.spool_dir == "/var/spool/outpost/feedback"
    assert config.feedback.learn_from_complaints is False
    from outpost.config import ConfigError
    with pytest.raises(ConfigError, match="spool_dir"):
        parse_config(CONFIG + "feedback: {spool_dir: relative/dir}\n", "c.yaml")
    with pytest.raises(ConfigError, match="after_complaints"):
        parse_config(LOCKING.replace("after_complaints: 3", "after_complaints: -1"), "c.yaml")


# -- the command's handling: counted once, kept when unattributable ----------------------------

@pytest.fixture
def setup(tmp_path):
    config = parse_config(LOCKING + f"feedback: {{spool_dir: {tmp_path}/fb, max_kept: 3}}\n", "c.yaml")
    return config, MemoryStore(), Spool(config.feedback)


def test_the_same_report_counts_once(setup, codec, token):
    config, store, spool = setup
    raw = sample("rfc5965_full.eml", token)
    first = handle(config, store, codec, spool, raw)
    again = handle(config, store, codec, spool, raw)
    assert first.code == again.code == EX_OK
    assert "1 for the identity" in first.text
    assert "counted before" in again.text
    [item] = list_data(spool)["counted"]
    assert (item["user"], item["identity"], item["queue_id"]) == ("webfarm", "alice@example.com", "4XyZ1234")


def test_unattributable_reports_are_kept_and_bounded(setup, codec):
    config, store, spool = setup
    for i in range(5):
        out = handle(config, store, codec, spool, b"Subject: complaint %d\r\n\r\nno token\r\n" % i)
        assert out.code == EX_OK and "kept unattributed" in out.text
    kept = list_data(spool)["unattributed"]
    assert len(kept) == 3                                  # max_kept
    assert {k["subject"] for k in kept} <= {f"complaint {i}" for i in range(5)}
    assert len(list((spool.root / "unattributed").glob("*.eml"))) == 3
    deep = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" * 500
    out = handle(config, store, codec, spool, deep)
    assert out.code == EX_OK and "unreadable: more than feedback.max_parts" in out.text


def test_learning_from_a_full_report(tmp_path, codec, token):
    from outpost.spam.bayes import Model
    from outpost.spam.from_config import MODEL_BLOB
    config = parse_config(CONFIG + f"feedback: {{spool_dir: {tmp_path}, learn_from_complaints: true}}\n",
                          "c.yaml")
    store = MemoryStore()
    out = handle(config, store, codec, Spool(config.feedback), sample("aol_like.eml", token))
    assert out.text.endswith("learned as spam")
    model = Model.from_bytes(store.get_blob(MODEL_BLOB) or b"")
    assert model.nspam == 1 and model.nham == 0 and len(model) > 10
    # headers only: nothing to learn from
    other = TokenCodec(SECRET).seal(Origin("webfarm", "bob@example.com", "", "Q9", 9))
    out = handle(config, store, codec, Spool(config.feedback), sample("yahoo_like.eml", other))
    assert "learned" not in out.text
    assert Model.from_bytes(store.get_blob(MODEL_BLOB) or b"").nspam == 1


def test_read_bounded_drains_the_rest():
    stream = io.BytesIO(b"a" * 100 + b"b" * 300_000)
    data, more = read_bounded(stream, 100)
    assert (data, more) == (b"a" * 100, True)
    assert stream.read() == b""
    assert read_bounded(io.BytesIO(b"abc"), 100) == (b"abc", False)


def test_a_store_failure_leaves_nothing_counted(setup, codec, token):
    """The store fails between the claim and the count: the error reaches the
    command (exit 75, the MTA retries) and the retry counts the complaint."""
    from outpost.store.base import StoreError
    config, store, spool = setup

    class Down(MemoryStore):
        def record_event(self, key, window):
            raise StoreError("connection refused")

    raw = sample("rfc5965_full.eml", token)
    with pytest.raises(StoreError):
        handle(config, Down(), codec, spool, raw)
    assert list_data(spool)["counted"] == []
    assert "1 for the identity" in handle(config, store, codec, spool, raw).text


def test_many_distinct_tokens_keep_the_first_few_in_order() -> None:
    """Only MAX_TOKENS candidates are tried; tens of thousands of distinct
    ones are collected in one linear pass (a list membership test per
    token made 35 000 of them cost 21 s of CPU)."""
    from outpost.core.feedback import MAX_TOKENS
    tokens = [b"A%045d" % i for i in range(30000)]
    raw = b"From: a@b\r\nSubject: x\r\n\r\n" + b"".join(b"X-Outpost-ID: %s\r\n" % t for t in tokens)
    report = parse_report(raw)
    assert report.tokens == tuple(t.decode() for t in tokens[:MAX_TOKENS])


def test_bare_cr_line_ends_count_towards_the_part_bound() -> None:
    # the email package ends lines at a bare CR too; only LF ones were counted
    raw = b'From: a@b\rContent-Type: multipart/mixed; boundary="x"\r\r' + b"--x\rContent-Type: text/plain\r\rh\r" * 200
    with pytest.raises(ReportError):
        parse_report(raw)


@pytest.mark.parametrize("kind", ["not-spam", "auth-failure"])
def test_reports_that_are_no_complaint_are_kept_not_counted(setup, codec, token, kind):
    config, store, spool = setup
    raw = sample("rfc5965_full.eml", token).replace(b"Feedback-Type: abuse",
                                                   b"Feedback-Type: " + kind.encode())
    out = handle(config, store, codec, spool, raw)
    assert out.code == EX_OK and "not a complaint" in out.text
    assert not list_data(spool)["counted"]
    assert store.record_event("complaints:webfarm/alice@example.com", 86400) == 1   # nothing before


# -- counted once per reported message, whatever fails part way --------------------------------

class FailOnce(MemoryStore):
    """A store whose ``method`` fails (once) on its ``at``-th call."""

    def __init__(self, method: str, at: int, exc: Exception) -> None:
        super().__init__()
        self.method, self.at, self.exc, self.calls = method, at, exc, 0

    def _maybe_fail(self, name: str) -> None:
        if name == self.method:
            self.calls += 1
            if self.calls == self.at:
                raise self.exc

    def record_event(self, key, window):
        self._maybe_fail("record_event")
        return super().record_event(key, window)

    def hit(self, buckets, dry_run=False):
        self._maybe_fail("hit")
        return super().hit(buckets, dry_run)

    def set_lock(self, *args, **kwargs):
        self._maybe_fail("set_lock")
        return super().set_lock(*args, **kwargs)


def test_a_store_error_part_way_is_not_counted_twice_on_retry(setup, codec, token):
    """The identity's count was recorded, the user's count failed: exit 75
    and the MTA's retry of the same report completes the count without
    counting the identity again."""
    from outpost.store.base import StoreError
    config, _, spool = setup
    store = FailOnce("record_event", 2, StoreError("connection reset"))
    raw = sample("rfc5965_full.eml", token)
    with pytest.raises(StoreError):
        handle(config, store, codec, spool, raw)
    assert [i["state"] for i in list_data(spool)["counting"]] == ["counting"]
    out = handle(config, store, codec, spool, raw)
    assert "1 for the identity, 1 for the user" in out.text
    assert store.record_event("complaints:webfarm/alice@example.com", 86400) == 2   # 1 before
    assert list_data(spool)["counting"] == []
    # another receiver's report about the same message: counted once, as documented
    other = raw.replace(b"User-Agent: SomeGenerator/1.0", b"User-Agent: OtherLoop/2.0")
    assert "counted before" in handle(config, store, codec, spool, other).text


def test_a_lock_that_failed_part_way_is_set_by_the_retry(setup, codec):
    from outpost.store.base import StoreError
    config, _, spool = setup
    store = FailOnce("set_lock", 1, StoreError("read-only replica"))
    raws = [sample("rfc5965_full.eml", codec.seal(Origin("webfarm", "alice@example.com", "",
                                                          f"Q{i}", i))) for i in range(3)]
    for raw in raws[:2]:
        handle(config, store, codec, spool, raw)
    with pytest.raises(StoreError):
        handle(config, store, codec, spool, raws[2])                # the third: lock fails
    out = handle(config, store, codec, spool, raws[2])
    assert "3 for the identity" in out.text and "locked webfarm/alice@example.com" in out.text
    assert store.record_event("complaints:webfarm/alice@example.com", 86400) == 4


def test_two_relays_sharing_the_store_count_a_message_once(tmp_path, codec, token):
    config = parse_config(LOCKING, "c.yaml")
    store = MemoryStore()
    spools = [Spool(parse_config(LOCKING + f"feedback: {{spool_dir: {tmp_path}/{n}}}\n",
                                 "c.yaml").feedback) for n in ("a", "b")]
    raw = sample("rfc5965_full.eml", token)
    assert "1 for the identity" in handle(config, store, codec, spools[0], raw).text
    out = handle(config, store, codec, spools[1], raw)
    assert "counted before (the store holds its claim)" in out.text
    assert list_data(spools[1]) == {"unattributed": [], "counted": [], "counting": []}


@pytest.mark.parametrize("method", ["hit", "record_event"])
def test_an_internal_error_keeps_the_report_and_blocks_no_retry(setup, codec, token, method):
    """Not a store error (a fault of ours): the report is kept (not lost),
    the answer is 75 (the MTA retries), nothing in ``counted/`` blocks the
    retry (no record before the store's claim; after it, the progress the
    retry resumes), and the retry that counts it drops the kept copy."""
    from outpost.feedback_command import EX_TEMPFAIL
    config, _, spool = setup
    store = FailOnce(method, 1, RuntimeError("a bug"))
    raw = sample("rfc5965_full.eml", token)
    out = handle(config, store, codec, spool, raw)
    assert out.code == EX_TEMPFAIL and "internal error" in out.text and "RuntimeError" in out.text
    data = list_data(spool)
    assert data["counted"] == []
    assert [i["state"] for i in data["counting"]] == ([] if method == "hit" else ["counting"])
    assert [k["reason"] for k in data["unattributed"]] == [
        "internal error while counting it: RuntimeError: a bug"]
    out = handle(config, store, codec, spool, raw)
    assert out.code == EX_OK and "1 for the identity" in out.text
    assert list_data(spool)["unattributed"] == list_data(spool)["counting"] == []


def _with_attached(head_token: str, attached_token: str) -> bytes:
    """A report whose header block carries ``head_token`` and whose attached
    message (with a body) carries ``attached_token`` ('' : none)."""
    inner = (b"From: <alice@example.com>\r\nSubject: unrelated\r\n"
             + (b"X-Outpost-ID: " + attached_token.encode() + b"\r\n" if attached_token else b"")
             + b"\r\nthe body of some other message\r\n")
    return (b"From: <fbl@example.org>\r\nSubject: complaint\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/report; report-type=feedback-report; boundary=\"b\"\r\n\r\n"
            b"--b\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\n"
            b"User-Agent: T/1\r\nVersion: 1\r\n\r\n"
            b"--b\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: <alice@example.com>\r\n"
            b"X-Outpost-ID: " + head_token.encode() + b"\r\n\r\n"
            b"--b\r\nContent-Type: message/rfc822\r\n\r\n" + inner + b"--b--\r\n")


def test_only_the_verified_reported_message_is_learned(tmp_path, codec, token):
    """The attribution came from the header block: an attached message
    without a token, with a forged one or with another message's token is
    not what was reported and is never learned from."""
    from outpost.spam.from_config import MODEL_BLOB
    config = parse_config(CONFIG + f"feedback: {{spool_dir: {tmp_path}, learn_from_complaints: true}}\n",
                          "c.yaml")
    store = MemoryStore()
    another = codec.seal(Origin("webfarm", "bob@example.com", "", "Q7", 7))
    forged = TokenCodec(b"another secret of sixteen bytes+").seal(ORIGIN)
    for n, attached in enumerate(("", forged, another)):
        mine = codec.seal(Origin("webfarm", "alice@example.com", "", f"N{n}", n))
        report = parse_report(_with_attached(mine, attached))
        origin, _ = attribute(report, codec)
        assert origin is not None and origin.queue_id == f"N{n}"
        assert verified_original(report, codec, origin) is None
        out = handle(config, store, codec, Spool(config.feedback), _with_attached(mine, attached))
        assert "counted complaint" in out.text and "learned" not in out.text
    assert store.get_blob(MODEL_BLOB) is None
    out = handle(config, store, codec, Spool(config.feedback), _with_attached(token, token))
    assert out.text.endswith("learned as spam")


def test_a_complaint_lock_sends_an_abuse_report(setup, codec):
    """The lock set by complaints is reported as the automatic lock is,
    naming the complaints counted and the window."""
    config, store, spool = setup
    events = []
    origins = [Origin("webfarm", "alice@example.com", "192.0.2.1", f"QID{i}", 1764580000 + i)
               for i in range(3)]
    outs = [handle(config, store, codec, spool, sample("rfc5965_full.eml", codec.seal(o)),
                   reporter=events.append) for o in origins]
    assert "locked webfarm/alice@example.com" in outs[2].text
    [event] = events
    assert (event.kind, event.action, event.user, event.identity) == (
        "complaints", "lock", "webfarm", "alice@example.com")
    assert event.reason == "3 complaints in 86400s"
    assert event.lock_until is not None and event.remedy == "outpost unlock webfarm/alice@example.com"
    assert [line.split(" about queue id ")[1].split(" ")[0] for line in event.evidence] == [
        "QID0", "QID1", "QID2"]
    assert all("abuse, reported by" in line for line in event.evidence)
    from outpost.effects.reports import ReportSettings, render_report
    text = render_report(event, ReportSettings(to="abuse@example.net", from_addr="outpost@example.net"),
                         now=event.arrival_time).data.decode()
    assert "locked until" in text and "3 complaints in 86400s" in text and "QID1" in text
