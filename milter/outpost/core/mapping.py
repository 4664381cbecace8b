"""Who is sending: SMTP AUTH login → domain → longest-prefix client network;
mail submitted on the relay itself (sendmail(1), no client) → the ``local`` user.

:class:`UserIndex` is built once per configuration.  Network lookup is a hash
probe per distinct prefix length (longest first): at most 33 probes for IPv4
and 129 for IPv6 whatever the number of networks, so it stays fast with a
million networks (see ``bench/mapping.py``).
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Generic, Iterable, Optional, TypeVar, Union

from ..config.model import User

V = TypeVar("V")
IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


@functools.lru_cache(maxsize=4096)
def parse_client_ip(text: Optional[str]) -> Optional[IPAddress]:
    """Client address from a milter macro or hostaddr: handles ``IPv6:`` and
    ``[…]`` wrappers and IPv4-mapped IPv6 (``::ffff:192.0.2.1`` → IPv4);
    None for ``unknown``, unix-socket clients and garbage.  Cached: the
    same clients come back, and address objects are immutable."""
    if not text:
        return None
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if text[:5].lower() == "ipv6:":
        text = text[5:]
    text = text.split("%", 1)[0]          # zone index
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


@functools.lru_cache(maxsize=4096)
def connection_key(addr: IPAddress, prefix_v6: int = 64) -> str:
    """What a client's concurrent connections are counted under: an IPv4
    address itself, an IPv6 address's ``/prefix_v6`` network (one customer
    usually holds a whole /64, and takes a new address from it at will).
    ``"2001:db8:1:2::/64"``; with ``prefix_v6 == 128`` the address."""
    if isinstance(addr, ipaddress.IPv6Address) and prefix_v6 < 128:
        return str(ipaddress.IPv6Network((addr, prefix_v6), strict=False))
    return str(addr)


class PrefixTable(Generic[V]):
    """Longest-prefix match over IPv4 and IPv6 networks."""

    def __init__(self) -> None:
        # per address family: {prefixlen: {network int: value}}, lengths sorted longest first
        self._tables: dict[int, dict[int, dict[int, V]]] = {4: {}, 6: {}}
        self._order: dict[int, list[int]] = {4: [], 6: []}

    def add(self, network: Union[ipaddress.IPv4Network, ipaddress.IPv6Network], value: V) -> None:
        by_len = self._tables[network.version].setdefault(network.prefixlen, {})
        by_len[int(network.network_address)] = value
        self._order[network.version] = sorted(self._tables[network.version], reverse=True)

    def add_many(self, items: Iterable[tuple[Union[ipaddress.IPv4Network, ipaddress.IPv6Network], V]]) -> None:
        for network, value in items:
            self._tables[network.version].setdefault(network.prefixlen, {})[int(network.network_address)] = value
        for version in (4, 6):
            self._order[version] = sorted(self._tables[version], reverse=True)

    def lookup(self, addr: IPAddress) -> Optional[V]:
        version = addr.version
        bits = 32 if version == 4 else 128
        n = int(addr)
        tables = self._tables[version]
        for plen in self._order[version]:
            masked = n & (((1 << plen) - 1) << (bits - plen)) if plen else 0
            hit = tables[plen].get(masked)
            if hit is not None:
                return hit
        return None

    def __len__(self) -> int:
        return sum(len(t) for fam in self._tables.values() for t in fam.values())


class UserIndex:
    """Maps logins, login domains and client addresses to outgoing users."""

    def __init__(self, users: Iterable[User]) -> None:
        self.by_name: dict[str, User] = {}
        self._logins: dict[str, User] = {}
        self._domains: dict[str, User] = {}
        self._networks: PrefixTable[User] = PrefixTable()
        self.local: Optional[User] = None      # the one user of type local
        nets: list[tuple[IPNetwork, User]] = []
        for user in users:
            self.by_name[user.name] = user
            for login in user.logins:
                self._logins[login.lower()] = user
            if user.type == "domain":
                self._domains[user.name] = user
            elif user.type == "local":
                self.local = user
            nets.extend((net, user) for net in user.ips)
        self._networks.add_many(nets)

    def by_login(self, login: str) -> Optional[User]:
        """Exact login first, then a ``domain`` user for the login's domain."""
        key = login.strip().lower()
        user = self._logins.get(key)
        if user is not None:
            return user
        if "@" in key:
            return self._domains.get(key.rsplit("@", 1)[1].rstrip("."))
        return None

    def by_ip(self, addr: Optional[IPAddress]) -> Optional[User]:
        return self._networks.lookup(addr) if addr is not None else None

    def resolve(self, login: Optional[str], addr: Optional[IPAddress],
                local: bool = False) -> tuple[Optional[User], str]:
        """(user, how) where how is 'login', 'domain', 'ip', 'local' or ''
        (unmapped).

        The order is: exact login, the ``domain`` user of the login's domain,
        then the longest-prefix network of the client address.  A login that
        maps to nothing still passes from a mapped network (that network is
        authorised whoever logs in); elsewhere it is refused.  Mail submitted
        on the relay itself (``local``: sendmail(1), no SMTP client) maps to
        the ``local`` user, never through a network: the loopback address the
        MTA reports for it is not a client."""
        if login:
            user = self.by_login(login)
            if user is not None:
                return user, ("domain" if user.type == "domain" else "login")
        if local:
            return (self.local, "local") if self.local is not None else (None, "")
        user = self.by_ip(addr)
        return (user, "ip") if user is not None else (None, "")
