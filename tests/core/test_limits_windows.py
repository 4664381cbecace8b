"""The rate-limit windows of a message are built once and shared by the
read-only check at RCPT and the count at the end of the message: the store
must still be asked about exactly the buckets :func:`buckets` names, at the
right cost, and count the same, in memory and in SQLite."""

from __future__ import annotations

import textwrap
from typing import Any, Sequence

import pytest

from outpost.config import parse_config
from outpost.config.model import Config
from outpost.core.limits import buckets, message_windows
from outpost.core.policy import Policy
from outpost.core.transaction import Transaction, drive
from outpost.core.types import Action, Message
from outpost.store.base import Bucket, HitResult, Store
from outpost.store.memory import MemoryStore
from outpost.store.sqlite import SqliteStore
from outpost.store.wrapper import StoreWrapper

from .conftest import SECRET

CONFIG = textwrap.dedent("""\
    hostname: relay.example.net
    report_abuse_to: abuse@example.net
    domains: [example.com]
    defaults:
      limits: {messages: ["3/1m", "50/1h"], recipients: ["7/1d"]}
      user_limits: {messages: ["100/1d"], recipients: ["9/1h"]}
      lock: {after_limit_hits: false, user_after_limit_hits: false}
    users:
      - name: webfarm
        type: ip
        ips: [192.0.2.0/28]
        domains: [example.com]
        identity_headers: [{header: X-AuthUser}]
      - name: alice
        type: login
        logins: [alice@example.com]
        domains: [example.com]
        limits: {messages: ["3/1m"]}
    """)


class Recording(StoreWrapper):
    """Remembers the buckets of every ``hit``."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.hits: list[tuple[list[Bucket], bool]] = []

    def hit(self, buckets: Sequence[Bucket], dry_run: bool = False) -> HitResult:
        self.hits.append((list(buckets), dry_run))
        return super().hit(buckets, dry_run)


@pytest.fixture
def config() -> Config:
    return parse_config(CONFIG, "limits.yaml")


@pytest.fixture(params=["memory", "sqlite"])
def store(request: Any, tmp_path: Any) -> Any:
    s = MemoryStore() if request.param == "memory" else SqliteStore(str(tmp_path / "state.db"))
    yield Recording(s)
    s.close()


@pytest.fixture
def policy(config: Config, store: Recording) -> Policy:
    from outpost.core.idtoken import TokenCodec
    return Policy(config, store, TokenCodec(SECRET))


def send(policy: Policy, rcpts: int, login: str | None = None, who: str | None = None) -> Any:
    headers = [("From", " alice@example.com" if login else " bob@example.com")]
    if who:
        headers.append(("X-AuthUser", f" {who}"))
    return drive(policy, Transaction(
        sender="<alice@example.com>" if login else "<bob@example.com>",
        recipients=[f"<r{i}@dest.example>" for i in range(rcpts)], headers=headers, body=b"hi\r\n",
        login=login, client_ip=None if login else "192.0.2.5", hostname="c.example", queue_id="Q"))


def test_the_store_is_asked_about_the_buckets_buckets_names_at_their_cost(policy: Policy,
                                                                          store: Recording) -> None:
    alice = policy.index.by_name["alice"]
    for rcpts in (1, 3, 1):
        store.hits.clear()
        out = send(policy, rcpts, login="alice@example.com")
        assert out.decision is not None and out.decision.action is Action.ACCEPT
        assert store.hits == [(buckets(alice, "alice@example.com", 1), True),
                              (buckets(alice, "alice@example.com", rcpts), False)]


def test_counts_in_the_store_after_messages_of_several_recipients(policy: Policy, store: Recording) -> None:
    webfarm = policy.index.by_name["webfarm"]
    for rcpts, who in ((1, "u1"), (3, "u1"), (2, "u2")):
        out = send(policy, rcpts, who=who)
        assert out.decision is not None and out.decision.action is Action.ACCEPT
    used = {b.key: s.used for b, s in zip(buckets(webfarm, "u1", 1),
                                          store.peek(buckets(webfarm, "u1", 1)))}
    assert used == {"rl:id:webfarm/u1:msg:60": 2, "rl:id:webfarm/u1:msg:3600": 2,
                    "rl:id:webfarm/u1:rcpt:86400": 4,
                    "rl:user:webfarm:msg:86400": 3, "rl:user:webfarm:rcpt:3600": 6}
    # the user's recipients as a whole: 1 + 3 + 2 = 6 of 9; 4 more are too many
    out = send(policy, 4, who="u3")
    assert out.decision is not None and out.decision.action is Action.TEMPFAIL
    assert "Too many recipients from webfarm (9/1h)" in str(out.decision.reply)


def test_refusals_name_the_window_that_is_full(policy: Policy) -> None:
    for _ in range(3):
        out = send(policy, 1, login="alice@example.com")
        assert out.decision is not None and out.decision.action is Action.ACCEPT
    out = send(policy, 1, login="alice@example.com")
    refused = [d for stage, d in out.decisions if d.blocks]
    assert [str(d.reply) for d in refused] == [
        "451 4.7.1 Too many messages from alice@example.com (3/1m); please wait and try again"]


def test_windows_follow_the_identity_and_the_user(policy: Policy, config: Config) -> None:
    webfarm, alice = policy.index.by_name["webfarm"], policy.index.by_name["alice"]
    msg = Message(user_name="webfarm", identity="u1")
    filled, at_one = policy.limits._message_windows(msg, webfarm)
    assert filled == message_windows(webfarm, "u1") and at_one == buckets(webfarm, "u1", 1)
    assert policy.limits._message_windows(msg, webfarm) == (filled, at_one)
    msg.identity = "u2"                              # not done by the core, but never stale
    assert policy.limits._message_windows(msg, webfarm)[1] == buckets(webfarm, "u2", 1)
    # a user object of another configuration: its own windows, not the cached ones
    other = parse_config(CONFIG.replace('user_limits: {messages: ["100/1d"]',
                                        'user_limits: {messages: ["5/1d"]'), "other.yaml")
    other_webfarm = next(u for u in other.users if u.name == "webfarm")
    fresh = Message(user_name="webfarm", identity="u1")
    assert policy.limits._message_windows(fresh, other_webfarm)[1] == buckets(other_webfarm, "u1", 1)
    assert buckets(other_webfarm, "u1", 1) != buckets(webfarm, "u1", 1)
    assert policy.limits._message_windows(Message(user_name="alice", identity="a"), alice)[1] == \
        buckets(alice, "a", 1)
