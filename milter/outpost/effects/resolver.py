"""Shared DNS plumbing for the DNS-using effects (SPF, DNS lists, domain
check): resolver construction from settings and a bounded TTL cache."""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Generic, Hashable, Optional, TypeVar

import dns.message
import dns.rdatatype
import dns.resolver


@dataclass(frozen=True)
class ResolverSettings:
    """How Outpost talks to DNS.

    ``nameservers`` empty means the system's ``/etc/resolv.conf``.
    ``timeout`` bounds one query to one server, ``lifetime`` one whole
    resolution (all servers and retries)."""

    nameservers: tuple[str, ...] = ()
    port: int = 53
    timeout: float = 2.0
    lifetime: float = 4.0

    def __post_init__(self) -> None:
        if isinstance(self.nameservers, (list, str)):
            object.__setattr__(self, "nameservers",
                               (self.nameservers,) if isinstance(self.nameservers, str)
                               else tuple(self.nameservers))
        for ns in self.nameservers:
            try:
                ipaddress.ip_address(ns)
            except ValueError:
                raise ValueError(f"dns.nameservers: {ns!r} is not an IP address") from None
        if not 0 < self.port < 65536:
            raise ValueError(f"dns.port must be 1..65535, got {self.port}")
        if not self.timeout > 0:
            raise ValueError("dns.timeout must be > 0")
        if not self.lifetime >= self.timeout:
            raise ValueError("dns.lifetime must be >= dns.timeout")


def make_resolver(settings: ResolverSettings) -> dns.resolver.Resolver:
    """A private dnspython resolver (never the global default one)."""
    if settings.nameservers:
        r = dns.resolver.Resolver(configure=False)
        r.nameservers = list(settings.nameservers)
    else:
        r = dns.resolver.Resolver()
    r.port = settings.port
    r.timeout = settings.timeout
    r.lifetime = settings.lifetime
    return r


def negative_ttl(response: Optional[dns.message.Message], default: float) -> float:
    """Negative-caching TTL of a NXDOMAIN/NODATA response (RFC 2308:
    min(SOA TTL, SOA minimum)), ``default`` without SOA."""
    if response is not None:
        for rrset in response.authority:
            if rrset.rdtype == dns.rdatatype.SOA:
                return float(min(rrset.ttl, rrset[0].minimum))
    return default


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """Thread-safe LRU cache whose entries expire after their own TTL.

    ``clock`` is injectable for tests (default ``time.monotonic``)."""

    def __init__(self, max_entries: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1:
            raise ValueError("cache max_entries must be >= 1")
        self._max = max_entries
        self._clock = clock
        self._data: "OrderedDict[K, tuple[float, V]]" = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> Optional[V]:
        with self._lock:
            item = self._data.get(key)
            if item is None:
                return None
            expires, value = item
            if expires <= self._clock():
                del self._data[key]
                return None
            self._data.move_to_end(key)
            return value

    def put(self, key: K, value: V, ttl: float) -> None:
        if ttl <= 0:
            return
        with self._lock:
            self._data[key] = (self._clock() + ttl, value)
            self._data.move_to_end(key)
            while len(self._data) > self._max:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
