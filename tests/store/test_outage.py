"""Redis going away and coming back: bounded errors, recovery without
re-creating the store, and the ``local`` fallback of ResilientStore."""

from __future__ import annotations

import logging
import threading
import time
from typing import Iterator

import pytest

from outpost.store import Bucket, StoreError, StoreSettings, open_store
from outpost.store.redis import RedisStore, redact_url
from outpost.store.resilient import ResilientStore
from tests.services.redis import RedisServer


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis this test may stop and start again (same port)."""
    with RedisServer() as srv:
        yield srv


def timed(fn, *args):
    t0 = time.monotonic()
    try:
        return fn(*args), time.monotonic() - t0
    except StoreError as exc:
        return exc, time.monotonic() - t0


def test_redis_down_raises_quickly_then_recovers(own_redis: RedisServer) -> None:
    store = open_store(own_redis.url, StoreSettings(key_prefix="down:", on_store_error="tempfail"))
    assert isinstance(store, ResilientStore) and isinstance(store.primary, RedisStore)
    bucket = [Bucket("u/down", 3, 60.0)]
    assert store.hit(bucket).allowed
    own_redis.stop()
    for op, args in [(store.hit, (bucket,)), (store.get_lock, ("k",)),
                     (store.conn_acquire, ("192.0.2.7", 5, "h:1:1")), (store.now, ())]:
        result, elapsed = timed(op, *args)
        assert isinstance(result, StoreError), result
        assert "redis store redis://127.0.0.1" in str(result)
        assert elapsed < 1.5
    own_redis.start()                              # same port, empty server
    assert store.hit(bucket).allowed               # scripts are re-loaded by themselves
    assert store.peek(bucket)[0].used == 1
    store.close()


def test_unreachable_redis_is_bounded() -> None:
    srv = RedisServer()                            # never started: connection refused
    store = open_store(srv.url, StoreSettings(connect_timeout=0.2, op_timeout=0.2,
                                                 on_store_error="tempfail"))
    result, elapsed = timed(store.hit, [Bucket("x", 1, 1.0)])
    assert isinstance(result, StoreError) and elapsed < 1.0
    srv.close()


def test_password_is_redacted() -> None:
    assert redact_url("redis://:s3cret@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert redact_url("rediss://u:pw@h:1/2") == "rediss://u:***@h:1/2"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_local_fallback_and_recovery(own_redis: RedisServer,
                                     caplog: pytest.LogCaptureFixture) -> None:
    settings = StoreSettings(key_prefix="local:", on_store_error="local", retry_interval=0.3)
    store = open_store(own_redis.url, settings)
    assert isinstance(store, ResilientStore)
    bucket = [Bucket("u/fallback", 3, 60.0)]
    assert store.hit(bucket).allowed and not store.degraded and store.fallbacks == 0

    own_redis.stop()
    caplog.set_level(logging.WARNING, logger="outpost.store")
    t0 = time.monotonic()
    local = [store.hit(bucket).allowed for _ in range(4)]
    assert time.monotonic() - t0 < 1.5
    assert local == [True, True, True, False]      # local memory enforces the limit
    assert store.degraded and store.fallbacks == 4 and store.outages == 1
    assert store.set_lock("farm/x", "spam", 60.0).reason == "spam"
    assert store.get_lock("farm/x") is not None
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "serving from process memory" in errors[0].getMessage()

    time.sleep(0.35)                               # a probe of the primary is due
    assert store.hit([Bucket("u/other", 3, 60.0)]).allowed   # still down: local again
    assert store.fallbacks == 7 and len([r for r in caplog.records
                                         if r.levelno == logging.ERROR]) == 1

    own_redis.start()
    time.sleep(0.35)
    assert store.hit(bucket).allowed               # back on Redis without a restart
    assert not store.degraded and store.fallbacks == 7
    assert store.primary.peek(bucket)[0].used == 1  # fresh server: counted there
    assert store.get_lock("farm/x") is None         # local-only lock is not carried over
    assert any("is back" in r.getMessage() for r in caplog.records)
    store.close()


@pytest.mark.parametrize("mode", ["tempfail", "accept"])
def test_tempfail_mode_never_serves_locally(own_redis: RedisServer, mode: str) -> None:
    store = open_store(own_redis.url, StoreSettings(on_store_error=mode, key_prefix="tf:"))
    assert isinstance(store, ResilientStore) and isinstance(store.primary, RedisStore)
    own_redis.stop()
    for _ in range(2):
        with pytest.raises(StoreError):
            store.hit([Bucket("u/tf", 3, 60.0)])
    assert store.fallbacks == 0 and not store.degraded
    store.close()


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def pause(server: RedisServer, ms: int) -> None:
    """CLIENT PAUSE: every other client's command waits (ours time out)."""
    import redis
    r = redis.Redis.from_url(server.url)
    r.execute_command("CLIENT", "PAUSE", ms, "ALL")
    r.close()


def unpause(server: RedisServer) -> None:
    import redis
    r = redis.Redis.from_url(server.url)
    r.execute_command("CLIENT", "UNPAUSE")
    r.close()


def shared_count(server: RedisServer, prefix: str, ip: str) -> int:
    import redis
    r = redis.Redis.from_url(server.url)
    try:
        return int(r.scard(f"{prefix}conn:{ip}"))
    finally:
        r.close()


@pytest.mark.parametrize("mode", ["local", "tempfail"])
def test_slots_taken_in_redis_are_freed_there_after_a_hiccup(own_redis: RedisServer,
                                                             mode: str) -> None:
    """Connections close while the store is paused (local mode: while this
    process serves from memory): their slots are freed in Redis when it
    answers again, so the client IP is not refused for ever after."""
    settings = StoreSettings(key_prefix="hic:", on_store_error=mode, op_timeout=0.2,
                             connect_timeout=0.2, retry_interval=5.0)
    clock = Clock()
    store = ResilientStore(RedisStore(own_redis.url, settings), settings, clock=clock)
    ip = "192.0.2.9"
    assert store.conn_acquire(ip, 2, "h:1:1") == (True, 1)
    assert store.conn_acquire(ip, 2, "h:1:2") == (True, 2)
    assert store.conn_acquire(ip, 2, "h:1:3") == (False, 2)
    pause(own_redis, 5000)
    try:
        if mode == "local":
            assert store.conn_acquire(ip, 2, "h:1:4") == (True, 1)   # served from memory
            assert store.degraded
        store.conn_release(ip, "h:1:1")                # closed during the hiccup
        store.conn_release(ip, "h:1:2")
        if mode == "local":
            store.conn_release(ip, "h:1:4")            # freed in memory, where it was taken
        # and h:1:4 is also owed to Redis: its timed-out acquire may run there late
        assert store.pending_releases == (3 if mode == "local" else 2)
    finally:
        unpause(own_redis)
    assert shared_count(own_redis, "hic:", ip) == 2    # still counted in Redis
    clock.t += 5.0                                     # the next call probes Redis
    assert store.conn_acquire(ip, 2, "h:1:5") == (True, 1)
    assert not store.degraded and store.pending_releases == 0
    store.conn_release(ip, "h:1:5")
    assert shared_count(own_redis, "hic:", ip) == 0
    store.close()


def test_heartbeat_pays_the_releases_without_traffic(own_redis: RedisServer) -> None:
    settings = StoreSettings(key_prefix="hb:", on_store_error="local", op_timeout=0.2,
                             connect_timeout=0.2, retry_interval=5.0)
    clock = Clock()
    store = ResilientStore(RedisStore(own_redis.url, settings), settings, clock=clock)
    ip = "2001:db8::9"
    assert store.conn_acquire(ip, 5, "h:2:1") == (True, 1)
    pause(own_redis, 5000)
    try:
        store.process_alive("h", 2)                    # fails: serving locally now
        store.conn_release(ip, "h:2:1")
    finally:
        unpause(own_redis)
    assert shared_count(own_redis, "hb:", ip) == 1
    clock.t += 5.0
    store.process_alive("h", 2)                        # the next heartbeat reaches Redis
    assert shared_count(own_redis, "hb:", ip) == 0 and store.pending_releases == 0
    store.close()


def watchers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "outpost-store-watch"]


def test_a_store_that_follows_failovers_is_watched_in_the_background(
        own_redis: RedisServer) -> None:
    """With the clock frozen (no ``retry_interval`` probe ever comes due),
    the store that follows failovers (as a Sentinel one does) is back
    right after Redis answers again, found by its background check; the
    plain one stays on process memory until its ``retry_interval``
    passes.  ``close`` stops the check of a store still down."""
    settings = StoreSettings(key_prefix="watch:", on_store_error="local",
                             connect_timeout=0.2, op_timeout=0.2)
    clock = Clock()
    followed = RedisStore(own_redis.url, settings)
    followed.follows_failover = True                   # what a redis+sentinel:// store says
    watched = ResilientStore(followed, settings, clock=clock)
    plain = ResilientStore(RedisStore(own_redis.url, settings), settings, clock=clock)
    bucket = [Bucket("u/watch", 5, 60.0)]
    for store in (watched, plain):
        assert store.hit(bucket).allowed and not store.degraded
    own_redis.stop()
    for store in (watched, plain):
        assert store.hit(bucket).allowed and store.degraded       # served locally
    assert len(watchers()) == 1                        # the plain store has none
    own_redis.start()
    deadline = time.monotonic() + 5
    while watched.degraded:
        assert time.monotonic() < deadline, "the background check did not find Redis back"
        watched.hit(bucket)
        time.sleep(0.02)
    assert watched.outages == 1 and watched.primary.peek(bucket)[0].used >= 1
    assert plain.hit(bucket).allowed and plain.degraded    # no probe due before retry_interval
    clock.t += settings.retry_interval
    assert plain.hit(bucket).allowed and not plain.degraded
    deadline = time.monotonic() + 5
    while watchers():                                  # it ends once the store is back
        assert time.monotonic() < deadline
        time.sleep(0.02)
    own_redis.stop()
    assert watched.hit(bucket).allowed and watched.degraded and len(watchers()) == 1
    watched.close()                                    # stops the check of a store still down
    assert watchers() == []
    plain.close()
