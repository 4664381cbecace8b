"""Redis going away and coming back: bounded errors, recovery without
re-creating the store, and the ``local`` fallback of ResilientStore."""

from __future__ import annotations

import logging
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
    assert isinstance(store, RedisStore)
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


def test_tempfail_mode_is_not_wrapped(own_redis: RedisServer) -> None:
    store = open_store(own_redis.url, StoreSettings(on_store_error="tempfail"))
    assert isinstance(store, RedisStore)
    store.close()
