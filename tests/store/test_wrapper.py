"""Store wrappers forward the whole interface: a method added to ``Store``
and forgotten in ``StoreWrapper`` fails here."""

from __future__ import annotations

import inspect
from unittest import mock

import pytest

from outpost.store.base import Bucket, Store
from outpost.store.memory import MemoryStore
from outpost.store.readonly import ReadOnlyStore
from outpost.store.resilient import ResilientStore
from outpost.store.wrapper import StoreWrapper

#: Every method of the interface: the abstract ones and those with a default.
METHODS = sorted(name for name, fn in inspect.getmembers(Store, inspect.isfunction)
                 if not name.startswith("_"))


def test_the_interface_is_what_the_wrapper_knows() -> None:
    assert set(Store.__abstractmethods__) <= set(METHODS)
    assert {"close", "fingerprint_add_many"} <= set(METHODS)


def arguments(name: str) -> list[object]:
    """One distinct placeholder per required parameter of ``Store.<name>``."""
    params = list(inspect.signature(getattr(Store, name)).parameters.values())[1:]
    return [f"{name}-arg{i}" for i, p in enumerate(params) if p.default is p.empty]


@pytest.mark.parametrize("name", METHODS)
def test_every_store_method_is_forwarded(name: str) -> None:
    assert name in vars(StoreWrapper), f"StoreWrapper does not define {name}"
    inner = mock.create_autospec(Store, instance=True)
    inner.url = "test://inner"
    wrapper = StoreWrapper(inner)
    args = arguments(name)
    result = getattr(wrapper, name)(*args)
    method = getattr(inner, name)
    assert method.call_count == 1
    called = method.call_args.args
    assert list(called[:len(args)]) == args          # defaults may be passed explicitly
    assert result is method.return_value or result is None


def test_the_wrapper_can_be_instantiated_with_nothing_left_abstract() -> None:
    assert not StoreWrapper.__abstractmethods__
    assert StoreWrapper(MemoryStore()).url == MemoryStore().url


@pytest.mark.parametrize("name", METHODS)
def test_a_healthy_resilient_store_asks_the_shared_store(name: str) -> None:
    inner = mock.create_autospec(Store, instance=True)
    inner.url = "test://inner"
    inner.conn_acquire.return_value = (True, 1)
    store = ResilientStore(inner)
    if name == "conn_release":          # freed in the shared store: a slot taken there
        store.conn_acquire("192.0.2.1", 1, "h:1:1")
        store.conn_release("192.0.2.1", "h:1:1")
    else:
        getattr(store, name)(*arguments(name))
    assert getattr(inner, name).call_count == 1


def test_read_only_store_reads_the_real_store_and_writes_nothing() -> None:
    real = MemoryStore()
    real.set_lock("farm/amy", "spam", None)
    real.put_blob("model", b"m")
    b = [Bucket("rl:x", 1, 60.0)]
    assert real.hit(b).allowed
    ro = ReadOnlyStore(real)
    assert ro.get_lock("farm/amy") is not None and ro.get_blob("model") == b"m"
    assert [lk.key for lk in ro.list_locks()] == ["farm/amy"]
    assert not ro.hit(b).allowed and ro.peek(b)[0].used == 1
    ro.set_lock("farm/bob", "x", None)
    ro.put_blob("model", b"other")
    assert ro.swap_blob("model", b"m", b"other")     # as if written
    ro.record_event("hits:x", 60.0)
    ro.fingerprint_add("fp", "farm/amy", 3, 60.0)
    assert ro.conn_acquire("192.0.2.1", 1, "h:1:1") == (True, 0)
    ro.stat_add([("messages", 1)])
    assert ro.reset("rl:") == 0
    ro.close()                                        # leaves the real store open
    assert real.get_lock("farm/bob") is None and real.get_blob("model") == b"m"
    assert real.conn_count("192.0.2.1") == 0 and real.stat_read("m", 1) == {}
    assert real.fingerprint_add("fp", "farm/amy", 1, 60.0).messages == 1
    assert real.peek(b)[0].used == 1
