"""Local block lists of domains, hosts, URLs and sender addresses.

Lists are plain text files, one entry per line; ``#`` starts a comment
(at the start of a line or after white space); blank lines are ignored.

================================  ============================================
Entry                             Matches
================================  ============================================
``bad.example``                   that host and every sub-domain
                                  (``x.bad.example``)
``*.bad.example``                 sub-domains only, not ``bad.example`` itself
``192.0.2.7``, ``2001:db8::1``    that IP literal (URL hosts)
``192.0.2.0/24``                  any IP literal in that network
``bad.example/promo``             URLs on that host (and sub-domains) whose
                                  path starts with ``/promo`` (scheme ignored)
``spammer@bad.example``           that sender address exactly (sender lists)
``@bad.example``                  same as ``bad.example``
================================  ============================================

Names are compared case-insensitively; internationalised names may be
written in Unicode or punycode.  URL lists are checked against every link
host of the message (evidence ``url_listed``); sender lists against the
envelope sender and the From addresses (evidence ``sender_listed``).

Files are re-read when they change: at most every ``reload_interval``
seconds a check stats the files (mtime, size, inode) and reloads those that
changed.  A file that fails to load at start-up raises
:class:`BlocklistError`; one that fails on reload (being rewritten,
unreadable, a bad line) keeps its previous entries and the error is logged.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Union

from ..core.addresses import read_addresses as getaddresses  # survives nested comments
from .base import Check, Evidence, MessageView, ScanContext
from .message import idna_host

log = logging.getLogger(__name__)

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
MAX_LINE = 1000


class BlocklistError(ValueError):
    """A block list file is missing, unreadable or has an invalid entry."""


@dataclass(frozen=True)
class BlocklistSettings:
    """Files (absolute paths) and points of the block list check."""

    url_files: tuple[str, ...] = ()
    sender_files: tuple[str, ...] = ()
    reload_interval: float = 30.0
    url_points: float = 6.0
    sender_points: float = 6.0
    max_entries: int = 1_000_000

    def __post_init__(self) -> None:
        for name in ("url_files", "sender_files"):
            files = getattr(self, name)
            if isinstance(files, str):
                raise ValueError(f"blocklists.{name} must be a list of paths, not a string")
            files = tuple(files)
            for path in files:
                if not isinstance(path, str) or not os.path.isabs(path):
                    raise ValueError(f"blocklists.{name}: {path!r} is not an absolute path")
            object.__setattr__(self, name, files)
        if (not isinstance(self.reload_interval, (int, float))
                or not 0 <= self.reload_interval <= 86400):
            raise ValueError(f"blocklists.reload_interval must be 0..86400 seconds, "
                             f"got {self.reload_interval!r}")
        for name in ("url_points", "sender_points"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"blocklists.{name} must be a finite number >= 0, got {v!r}")
        if not isinstance(self.max_entries, int) or self.max_entries < 1:
            raise ValueError("blocklists.max_entries must be an integer >= 1")


def normalise_name(name: str) -> str:
    """Lower-case, no trailing dot, IDN labels in punycode; '' if invalid."""
    name = name.strip().rstrip(".").lower()
    if not name or any(c.isspace() for c in name) or "" in name.split("."):
        return ""
    if not name.isascii():
        name = idna_host(name)          # as the URL hosts of messages
    return name


def _parse_ip(text: str) -> Optional[Union[ipaddress.IPv4Address, ipaddress.IPv6Address]]:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


@dataclass
class ListIndex:
    """The entries of one or more files, indexed for lookups.  Values are
    the name of the file that listed the entry (for evidence details)."""

    domains: dict[str, str] = field(default_factory=dict)       # apex + sub-domains
    subdomains: dict[str, str] = field(default_factory=dict)    # sub-domains only
    ips: dict[str, str] = field(default_factory=dict)
    networks: list[tuple[IPNetwork, str]] = field(default_factory=list)
    url_prefixes: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)

    def size(self) -> int:
        return (len(self.domains) + len(self.subdomains) + len(self.ips) + len(self.networks)
                + sum(len(v) for v in self.url_prefixes.values()) + len(self.addresses))

    def merge(self, other: "ListIndex") -> None:
        for name in ("domains", "subdomains", "ips", "addresses"):
            for k, v in getattr(other, name).items():
                getattr(self, name).setdefault(k, v)
        self.networks.extend(other.networks)
        for host, prefixes in other.url_prefixes.items():
            self.url_prefixes.setdefault(host, []).extend(prefixes)

    def add(self, entry: str, source: str, allow_addresses: bool) -> None:
        """Index one entry; raises ValueError when it is not valid."""
        if "@" in entry:
            local, _, dom = entry.rpartition("@")
            dom = normalise_name(dom)
            if not dom:
                raise ValueError(f"bad domain in {entry!r}")
            if not local:
                self.domains.setdefault(dom, source)
            elif allow_addresses:
                self.addresses.setdefault(f"{local.lower()}@{dom}", source)
            else:
                raise ValueError(f"addresses belong in sender lists: {entry!r}")
            return
        if "://" in entry:
            entry = entry.split("://", 1)[1]
        host, slash, path = entry.partition("/")
        ip = _parse_ip(host)
        if slash and ip is not None and path.isdigit():
            try:
                self.networks.append((ipaddress.ip_network(entry, strict=False), source))
            except ValueError as exc:
                raise ValueError(f"bad network {entry!r}: {exc}") from None
            return
        if ip is not None:
            key = str(ip)
        elif host.startswith("*."):
            key = normalise_name(host[2:])
        else:
            key = normalise_name(host)
        if not key or "*" in key:
            raise ValueError(f"not a host, domain, URL, network or address: {entry!r}")
        if slash and path:
            self.url_prefixes.setdefault(key, []).append(("/" + path.lower(), source))
        elif ip is not None:
            self.ips.setdefault(key, source)
        elif host.startswith("*."):
            self.subdomains.setdefault(key, source)
        else:
            self.domains.setdefault(key, source)

    # -- lookups -------------------------------------------------------------
    def _suffixes(self, host: str) -> Iterable[tuple[str, bool]]:
        """(suffix, is_proper_suffix) from the host itself up to the TLD."""
        labels = host.split(".")
        for i in range(len(labels)):
            yield ".".join(labels[i:]), i > 0

    def match_host(self, host: str) -> Optional[tuple[str, str]]:
        """(entry, source) listing ``host``, or None."""
        ip = _parse_ip(host)
        if ip is not None:
            key = str(ip)
            if key in self.ips:
                return key, self.ips[key]
            for net, source in self.networks:
                if ip.version == net.version and ip in net:
                    return str(net), source
            return None
        host = normalise_name(host)
        if not host:
            return None
        for suffix, proper in self._suffixes(host):
            if suffix in self.domains:
                return suffix, self.domains[suffix]
            if proper and suffix in self.subdomains:
                return "*." + suffix, self.subdomains[suffix]
        return None

    def match_url(self, host: str, path: str) -> Optional[tuple[str, str]]:
        found = self.match_host(host)
        if found or not self.url_prefixes:
            return found
        ip = _parse_ip(host)
        key = str(ip) if ip is not None else normalise_name(host)
        candidates = [key] if ip is not None else [s for s, _ in self._suffixes(key)]
        path = path.lower() or "/"
        for cand in candidates:
            for prefix, source in self.url_prefixes.get(cand, ()):
                if path.startswith(prefix):
                    return cand + prefix, source
        return None

    def match_address(self, addr: str) -> Optional[tuple[str, str]]:
        addr = addr.strip().strip("<>")
        if "@" not in addr:
            return None
        local, _, dom = addr.rpartition("@")
        dom = normalise_name(dom)
        if not dom:
            return None
        full = f"{local.lower()}@{dom}"
        if full in self.addresses:
            return full, self.addresses[full]
        return self.match_host(dom)


def load_list(path: str, allow_addresses: bool, max_entries: int) -> ListIndex:
    """Read one list file; raises :class:`BlocklistError` naming the file
    and line of the first problem."""
    index = ListIndex()
    source = os.path.basename(path)
    count = 0
    try:
        with open(path, encoding="utf-8", errors="strict") as fh:
            for lineno, line in enumerate(fh, 1):
                if len(line) > MAX_LINE:
                    raise BlocklistError(f"{path}:{lineno}: line longer than {MAX_LINE} characters")
                if line.lstrip().startswith("#"):
                    continue
                for i, c in enumerate(line):
                    if c == "#" and (i == 0 or line[i - 1].isspace()):
                        line = line[:i]
                        break
                entry = line.strip()
                if not entry:
                    continue
                try:
                    index.add(entry, source, allow_addresses)
                except ValueError as exc:
                    raise BlocklistError(f"{path}:{lineno}: {exc}") from None
                count += 1
                if count > max_entries:
                    raise BlocklistError(f"{path}: more than {max_entries} entries")
    except UnicodeDecodeError as exc:
        raise BlocklistError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise BlocklistError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return index


def _signature(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size, st.st_ino


class _ListSet:
    """Several files of one kind, reloaded when they change."""

    def __init__(self, paths: tuple[str, ...], allow_addresses: bool, max_entries: int) -> None:
        self.paths = paths
        self.allow_addresses = allow_addresses
        self.max_entries = max_entries
        self.files: dict[str, tuple[tuple[int, int, int], ListIndex]] = {}
        for path in paths:
            try:
                sig = _signature(path)
            except OSError as exc:
                raise BlocklistError(f"{path}: cannot read: {exc.strerror or exc}") from None
            self.files[path] = (sig, load_list(path, allow_addresses, max_entries))
        self.index = self._combined()

    def _combined(self) -> ListIndex:
        combined = ListIndex()
        for path in self.paths:
            combined.merge(self.files[path][1])
        return combined

    def refresh(self) -> bool:
        """Reload changed files; True when something changed."""
        changed = False
        for path in self.paths:
            old_sig, _ = self.files[path]
            try:
                sig = _signature(path)
                if sig == old_sig:
                    continue
                index = load_list(path, self.allow_addresses, self.max_entries)
            except (OSError, BlocklistError) as exc:
                log.error("block list %s not reloaded, keeping %d old entries: %s",
                          path, self.files[path][1].size(), exc)
                continue
            self.files[path] = (sig, index)
            log.info("block list %s reloaded: %d entries", path, index.size())
            changed = True
        if changed:
            self.index = self._combined()
        return changed


class BlocklistCheck(Check):
    """Local URL and sender block lists; evidence ``url_listed`` and
    ``sender_listed``."""

    name = "blocklists"

    def __init__(self, settings: BlocklistSettings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._mutex = threading.Lock()
        self._urls = _ListSet(settings.url_files, False, settings.max_entries)
        self._senders = _ListSet(settings.sender_files, True, settings.max_entries)
        self._next_stat = clock() + settings.reload_interval

    def maybe_reload(self) -> bool:
        """Stat the files if ``reload_interval`` has passed since the last
        look, and reload changed ones; True when a list changed."""
        now = self._clock()
        with self._mutex:
            if now < self._next_stat:
                return False
            self._next_stat = now + self.settings.reload_interval
            changed_urls = self._urls.refresh()
            changed_senders = self._senders.refresh()
            return changed_urls or changed_senders

    def check(self, msg: MessageView, ctx: ScanContext) -> list[Evidence]:
        self.maybe_reload()
        s = self.settings
        urls_index, senders_index = self._urls.index, self._senders.index
        out: list[Evidence] = []
        if s.url_files and s.url_points:
            hits: list[str] = []
            for u in msg.urls:
                found = urls_index.match_url(u.host, _path_of(u.href))
                if found:
                    hits.append(f"{u.host} ({found[1]}: {found[0]})")
                    if len(hits) >= 5:
                        break
            if hits:
                out.append(Evidence("url_listed", s.url_points, ", ".join(hits)))
        if s.sender_files and s.sender_points:
            addrs = [ctx.sender] if ctx.sender else []
            addrs += [a for _n, a in getaddresses(msg.header_all("From")) if a]
            for addr in addrs:
                found = senders_index.match_address(addr)
                if found:
                    out.append(Evidence("sender_listed", s.sender_points,
                                        f"{addr[:200]} ({found[1]}: {found[0]})"))
                    break
        return out


def _path_of(href: str) -> str:
    """The path of a URL as written ('/' when it has none)."""
    rest = href.split("://", 1)[1] if "://" in href else href
    path = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
    for sep in ("?", "#"):
        path = path.split(sep, 1)[0]
    return path
