"""Volume anomalies per identity (core/volume.py): the scoring rule alone,
then through the decision core with the real engine and a memory store on
an exact clock (no pymilter)."""

from __future__ import annotations

import functools
import textwrap
from dataclasses import replace

import pytest

from outpost.config import parse_config
from outpost.config.model import VolumeBaseline, VolumeSettings
from outpost.core.idtoken import TokenCodec
from outpost.core.policy import Policy
from outpost.core.transaction import Transaction, drive
from outpost.core.types import Action
from outpost.core.volume import assess, domain_hashes, duration
from outpost.spam.from_config import build_engine
from outpost.store.base import VolumeCounts
from outpost.store.memory import MemoryStore
from tests.services.smtp import build_message

SETTINGS = VolumeSettings(baseline=VolumeBaseline(messages=2, recipients=4, domains=2, new_domains=2),
                          spike=5, extreme=15, points=2.0, max_points=4.0)


def counts(m: int, r: int, d: int, n: int, baseline=(0.0, 0.0, 0.0, 0.0)) -> VolumeCounts:
    return VolumeCounts(messages=m, recipients=r, domains=d, new_domains=n, baseline=baseline, since=0.0)


# -- the rule ------------------------------------------------------------------------

def test_a_new_identity_is_measured_against_the_cautious_baseline() -> None:
    quiet = assess(counts(10, 20, 10, 10), SETTINGS)           # 5x exactly: not over
    assert quiet.points == 0.0 and not quiet.extreme
    burst = assess(counts(11, 11, 3, 3), SETTINGS)             # 11 messages > 5 x 2
    assert burst.points == pytest.approx(2.3, abs=0.05) and not burst.extreme
    assert burst.measure == 0 and burst.expected == (2, 4, 2, 2)


def test_points_grow_per_doubling_and_are_capped() -> None:
    at = [assess(counts(1, 1, d, d), SETTINGS).points for d in (11, 20, 40, 400)]
    assert at[0] == pytest.approx(2.3, abs=0.05)
    assert at[1] == pytest.approx(4.0) and at[2] == 4.0 and at[3] == 4.0    # 2 x spike: +2, then the cap
    assert assess(counts(1, 1, 31, 31), SETTINGS).extreme                 # 31 domains > 15 x 2
    assert not assess(counts(1, 1, 30, 30), SETTINGS).extreme


def test_a_busy_identity_is_measured_against_its_own_baseline() -> None:
    busy = (40.0, 80.0, 30.0, 5.0)
    assert assess(counts(150, 300, 100, 20), SETTINGS).points == 4.0     # new: a burst
    ok = assess(counts(150, 300, 100, 20, baseline=busy), SETTINGS)
    assert ok.points == 0.0 and ok.ratio == pytest.approx(4.0)           # 20 new of 5 expected


def test_the_summary_names_the_baseline_and_the_burst() -> None:
    got = assess(counts(48, 48, 41, 41, baseline=(0.3, 0.3, 0.2, 0.1)), SETTINGS)
    text = got.summary(600.0)
    assert text.startswith("baseline 0.3 msgs, 0.3 rcpts, 0.2 domains/10m; now 48 msgs to 48 rcpts "
                           "in 41 domains (41 new) in 10m")
    assert got.extreme and "24.0x the expected 2.0 messages" in text


def test_domain_hashes_are_distinct_bounded_and_case_blind() -> None:
    got = domain_hashes(["a@X.example", "b@x.example.", "c@y.example", "nodomain", "d@z.example"], 2)
    assert len(got) == 2 and all(len(h) == 8 for h in got)
    assert got == domain_hashes(["q@x.example", "r@Y.EXAMPLE"], 5)
    assert duration(600) == "10m" and duration(3600) == "1h" and duration(90) == "90s"


# -- through the core -----------------------------------------------------------------

CONFIG = textwrap.dedent("""\
    report_abuse_to: abuse@example.net
    domains: [example.com]
    defaults:
      lock: {after_spam: 1000, user_after_spam: 1000, duration: 1h}
    volume:
      window: 10m
      half_life: 1h
      baseline: {messages: 1, recipients: 1, domains: 1, new_domains: 1}
      spike: 3
      extreme: 6
      points: 1.0
      max_points: 1.5
      action: hold
    users:
      - name: farm
        type: ip
        ips: [198.51.100.0/24]
        domains: [example.com]
        identity_headers: [{header: X-AuthUser}]
      - name: watched
        type: ip
        ips: [192.0.2.0/24]
        domains: [example.com]
        identity_headers: [{header: X-AuthUser}]
        mode: monitor
    """)


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


@functools.cache
def engine(text: str):
    """The engine of a configuration, built once (loading the model takes
    seconds); its bulk check keeps its fingerprints in a store of its own."""
    return build_engine(parse_config(text), MemoryStore())


def make_policy(action: str = "hold", text: str = CONFIG):
    config = parse_config(text.replace("action: hold", f"action: {action}"))
    clock = Clock()
    store = MemoryStore(clock=clock)
    reports: list = []
    policy = Policy(config, store, TokenCodec(b"k" * 32),
                    clock=clock, engine=engine(text if "weights" in text else CONFIG),
                    reporter=reports.append)
    return policy, clock, store, reports


def send(policy, who: str, n: int = 0, ip: str = "198.51.100.4"):
    rcpt = f"someone@dest{n}.example"
    raw = build_message("shop@example.com", rcpt, subject=f"Your order {n}",
                        headers={"X-AuthUser": who})
    out = drive(policy, Transaction.of_message(raw, "<shop@example.com>", [f"<{rcpt}>"],
                                               client_ip=ip, queue_id=f"Q{n}"))
    return out.decision


def evidence(d) -> str:
    return dict(d.add_headers).get("X-Outpost-Evidence", "")


def test_steady_then_burst_gives_evidence_then_hold_and_other_identities_are_untouched() -> None:
    policy, clock, store, reports = make_policy()
    for n in range(3):                                   # steady: 1..3, not over 3 x 1
        d = send(policy, "amy", n)
        assert d.action is Action.ACCEPT and d.quarantine is None and "volume_spike" not in evidence(d)
    burst = [send(policy, "amy", n) for n in range(3, 8)]
    assert [("volume_spike(" in evidence(d), d.quarantine is not None) for d in burst] == [
        (True, False), (True, False), (True, False), (True, True), (True, True)]
    held = burst[3]
    assert held.action is Action.ACCEPT and held.quarantine.startswith("Outpost: volume spike from farm/amy")
    assert [r.kind for r in reports] == ["volume", "volume"]
    assert reports[0].action == "quarantine" and reports[0].identity == "amy"
    assert reports[0].reason.startswith("baseline 0.0 msgs, 0.0 rcpts, 0.0 domains/10m; now 7 msgs "
                                        "to 7 rcpts in 7 domains (7 new) in 10m")
    other = send(policy, "bob", 99)                      # the same user, another identity
    assert other.quarantine is None and "volume_spike" not in evidence(other)


def test_a_learned_baseline_keeps_a_busy_identity_quiet() -> None:
    policy, clock, store, reports = make_policy()
    spikes = []
    for _ in range(30):                                  # 4 messages every 10 minutes (half-life 1h)
        spikes.append(sum("volume_spike" in evidence(send(policy, "busy", n)) for n in range(4)))
        clock.t += 600
    assert spikes[0] == 1 and spikes[-1] == 0            # the 4th of the first window was a spike
    for n in range(4):                                   # now within its habits
        d = send(policy, "busy", n)
        assert "volume_spike" not in evidence(d) and d.quarantine is None
    new = [send(policy, "newbie", n) for n in range(4)]  # the same is a spike for a new identity
    assert "volume_spike(" in evidence(new[3])


def test_tempfail_action_defers_with_a_clear_reply() -> None:
    policy, clock, store, reports = make_policy("tempfail")
    decisions = [send(policy, "amy", n) for n in range(7)]
    d = decisions[6]
    assert d.action is Action.TEMPFAIL and (d.reply.code, d.reply.xcode) == ("451", "4.7.1")
    assert d.reply.text == ("Unusual volume from amy: 7 messages to 7 domains in 10m; deferred, "
                            "please try again later")
    assert d.reason == "volume_spike" and [r.action for r in reports] == ["tempfail"]


def test_lock_action_locks_the_identity_only() -> None:
    policy, clock, store, reports = make_policy("lock")
    decisions = [send(policy, "amy", n) for n in range(7)]
    d = decisions[6]
    assert d.action is Action.TEMPFAIL and "Sending from amy is suspended" in d.reply.text
    assert d.reason == "locked"                          # the one locked reply, as at RCPT
    lock = store.get_lock("farm/amy")
    assert lock is not None and lock.reason.startswith("volume spike: baseline 0.0 msgs")
    assert [(r.kind, r.action) for r in reports] == [("volume", "lock")]
    again = send(policy, "amy", 50)
    assert again.action is Action.TEMPFAIL and again.reason == "locked"
    assert send(policy, "bob", 51).action is Action.ACCEPT


def test_none_action_is_evidence_only_and_monitor_mode_only_notes_the_hold() -> None:
    policy, clock, store, reports = make_policy("none")
    last = [send(policy, "amy", n) for n in range(8)][-1]
    assert last.action is Action.ACCEPT and last.quarantine is None and "volume_spike(" in evidence(last)
    assert reports == []
    policy, clock, store, reports = make_policy("hold")
    last = [send(policy, "eve", n, ip="192.0.2.9") for n in range(8)][-1]
    assert last.quarantine is None and reports == []
    assert "quarantine (volume_spike: baseline" in dict(last.add_headers)["X-Outpost-Would"]


def test_off_by_default_and_with_enabled_false() -> None:
    no_block = CONFIG[:CONFIG.index("volume:")] + CONFIG[CONFIG.index("users:"):]
    assert parse_config(no_block).volume is None
    assert parse_config(CONFIG.replace("volume:\n", "volume:\n  enabled: false\n")).volume is None
    policy, clock, store, reports = make_policy(text=no_block)
    assert all("volume_spike" not in evidence(send(policy, "amy", n)) for n in range(10))


def test_weight_zero_learns_without_points() -> None:
    text = CONFIG.replace("users:", "spam:\n  weights: {volume_spike: 0}\nusers:", 1)
    policy, clock, store, reports = make_policy("none", text)
    assert all("volume_spike" not in evidence(send(policy, "amy", n)) for n in range(8))
    assert store.volume_add("farm/amy", [], 0, policy.volume.spec, dry_run=True).messages == 9


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        replace(SETTINGS, extreme=4)
    with pytest.raises(ValueError):
        replace(SETTINGS, half_life=60.0)


@pytest.mark.parametrize("on_error", ["tempfail", "accept"])
def test_a_store_that_fails_the_volume_update(on_error: str) -> None:
    """The store's error policy applies: ``tempfail`` answers 451 4.3.0 (never
    an unfiltered accept), ``accept`` lets the message through uncounted."""
    from outpost.store.base import StoreError

    class Down(MemoryStore):
        calls = 0

        def volume_add(self, *args, **kwargs):
            Down.calls += 1
            raise StoreError("volume down")

    config = parse_config(f"on_store_error: {on_error}\n" + CONFIG)
    policy = Policy(config, Down(), TokenCodec(b"k" * 32), engine=engine(CONFIG))
    d = send(policy, "amy", 1)
    assert Down.calls == 1
    if on_error == "tempfail":
        assert d.action is Action.TEMPFAIL and str(d.reply) == (
            "451 4.3.0 Temporary local problem; please try again later")
    else:
        assert d.action is Action.ACCEPT and "volume_spike" not in evidence(d)
