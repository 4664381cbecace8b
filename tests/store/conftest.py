"""Fixtures: one store per backend (memory, sqlite, a real redis-server)."""

from __future__ import annotations

import types
import uuid
from typing import Callable, Iterator

import pytest

from outpost.store import Store, StoreSettings, open_store
from outpost.store import sqlite as sqlite_mod
from tests.services.redis import RedisServer
from tests.services.sentinel import SentinelCluster

BACKENDS = ["memory", "sqlite", "redis", "sentinel"]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as srv:
        yield srv


@pytest.fixture(scope="session")
def sentinel_cluster() -> Iterator[SentinelCluster]:
    """Master + replica + 3 Sentinels; the ``sentinel`` backend's store
    (no test may fail it over: tests/store/test_sentinel.py has its own)."""
    with SentinelCluster() as cluster:
        yield cluster


def backend_url(backend: str, request: pytest.FixtureRequest, tmp_path) -> str:
    if backend == "memory":
        return "memory:"
    if backend == "sqlite":
        return f"sqlite://{tmp_path}/state/outpost.db"
    if backend == "sentinel":
        return request.getfixturevalue("sentinel_cluster").url
    return request.getfixturevalue("redis_server").url


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make_store(backend: str, request: pytest.FixtureRequest,
               tmp_path) -> Iterator[Callable[..., Store]]:
    """``make_store(**settings)`` opens a store of the parametrised backend;
    each test gets its own Redis key prefix / sqlite file."""
    url = backend_url(backend, request, tmp_path)
    prefix = f"t{uuid.uuid4().hex[:10]}:"
    stores: list[Store] = []

    def make(**fields: object) -> Store:
        fields.setdefault("key_prefix", prefix)
        fields.setdefault("on_store_error", "tempfail")   # test the bare backends
        store = open_store(url, StoreSettings(**fields))  # type: ignore[arg-type]
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def store(make_store: Callable[..., Store]) -> Store:
    return make_store()


class SqliteClock:
    """Stands in for the ``time`` module of outpost.store.sqlite."""

    def __init__(self) -> None:
        self.t = 1.0e9

    def time(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> SqliteClock:
    """The sqlite store's clock, set by the test (``clock.t``)."""
    c = SqliteClock()
    monkeypatch.setattr(sqlite_mod, "time", types.SimpleNamespace(time=c.time))
    return c
