"""A store that wraps another: the base of every store wrapper.

:class:`StoreWrapper` implements each :class:`~outpost.store.base.Store`
method, written out so that type checkers and readers see the interface,
by passing it to :meth:`StoreWrapper._forward`, which calls the same method
of the inner store.  A wrapper overrides only what it changes: a method
(:class:`~outpost.store.readonly.ReadOnlyStore` turns writes into no-ops),
or ``_forward`` itself (:class:`~outpost.store.resilient.ResilientStore`
routes every call to the shared store or to process memory).  A method added
to ``Store`` is added here once; ``tests/store/test_wrapper.py`` fails until
it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional, Sequence, TypeVar, cast

from .base import (
    Bucket,
    BucketState,
    DecisionEntry,
    FingerprintStats,
    HitResult,
    Lock,
    Store,
    VolumeCounts,
    VolumeSpec,
)

if TYPE_CHECKING:                  # Python 3.10+; annotations only (3.9 runs this too)
    from typing import Concatenate, ParamSpec
    P = ParamSpec("P")
R = TypeVar("R")


class StoreWrapper(Store):
    """Forwards every store method to ``inner``."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.url = inner.url

    def _forward(self, method: Callable[Concatenate[Store, P], R],
                 *args: P.args, **kwargs: P.kwargs) -> R:
        """Call ``method`` (a method of :class:`Store`, e.g. ``Store.hit``:
        type checkers check the arguments against it) on the inner store;
        every method of the interface comes through here."""
        return cast(R, getattr(self.inner, method.__name__)(*args, **kwargs))

    def close(self) -> None:
        self._forward(Store.close)

    def now(self) -> float:
        return self._forward(Store.now)

    def conn_acquire(self, ip: str, limit: int, slot: str) -> tuple[bool, int]:
        return self._forward(Store.conn_acquire, ip, limit, slot)

    def conn_release(self, ip: str, slot: str) -> None:
        self._forward(Store.conn_release, ip, slot)

    def conn_count(self, ip: str) -> int:
        return self._forward(Store.conn_count, ip)

    def process_alive(self, host: str, pid: int) -> None:
        self._forward(Store.process_alive, host, pid)

    def process_gone(self, host: str, pid: int) -> None:
        self._forward(Store.process_gone, host, pid)

    def hit(self, buckets: Sequence[Bucket], dry_run: bool = False) -> HitResult:
        return self._forward(Store.hit, buckets, dry_run)

    def peek(self, buckets: Sequence[Bucket]) -> list[BucketState]:
        return self._forward(Store.peek, buckets)

    def reset(self, key_prefix: str) -> int:
        return self._forward(Store.reset, key_prefix)

    def record_event(self, key: str, window: float) -> int:
        return self._forward(Store.record_event, key, window)

    def get_lock(self, key: str) -> Optional[Lock]:
        return self._forward(Store.get_lock, key)

    def set_lock(self, key: str, reason: str, duration: Optional[float],
                 by: str = "auto", max_auto_unlocks: Optional[int] = None) -> Lock:
        return self._forward(Store.set_lock, key, reason, duration, by, max_auto_unlocks)

    def remove_lock(self, key: str) -> bool:
        return self._forward(Store.remove_lock, key)

    def list_locks(self) -> list[Lock]:
        return self._forward(Store.list_locks)

    def fingerprint_add(self, fp: str, member: str, recipients: int,
                        window: float) -> FingerprintStats:
        return self._forward(Store.fingerprint_add, fp, member, recipients, window)

    def fingerprint_add_many(self, items: Sequence[tuple[str, str, int]],
                             window: float) -> list[FingerprintStats]:
        return self._forward(Store.fingerprint_add_many, items, window)

    def volume_add(self, key: str, domains: Sequence[str], recipients: int, spec: VolumeSpec,
                   dry_run: bool = False) -> VolumeCounts:
        return self._forward(Store.volume_add, key, domains, recipients, spec, dry_run)
    def fingerprint_add_message(self, fps: Sequence[str], member: str, recipients: int,
                                window: float) -> list[tuple[FingerprintStats, FingerprintStats]]:
        return self._forward(Store.fingerprint_add_message, fps, member, recipients, window)

    def stat_add(self, counts: Sequence[tuple[str, int]],
                 recent: Sequence[tuple[str, int]] = ()) -> None:
        self._forward(Store.stat_add, counts, recent)

    def stat_read(self, period: str, count: int) -> dict[str, int]:
        return self._forward(Store.stat_read, period, count)

    def stat_series(self, period: str, count: int,
                    names: Sequence[str]) -> list[dict[str, int]]:
        return self._forward(Store.stat_series, period, count, names)

    def decision_add(self, entries: Sequence[DecisionEntry]) -> None:
        self._forward(Store.decision_add, entries)

    def decision_read(self, limit: int, offset: int = 0) -> list[DecisionEntry]:
        return self._forward(Store.decision_read, limit, offset)

    def put_blob(self, name: str, data: bytes) -> None:
        self._forward(Store.put_blob, name, data)

    def get_blob(self, name: str) -> Optional[bytes]:
        return self._forward(Store.get_blob, name)

    def swap_blob(self, name: str, expected: Optional[bytes], data: bytes) -> bool:
        return self._forward(Store.swap_blob, name, expected, data)
