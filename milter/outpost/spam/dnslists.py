"""DNS block-list lookups (DNSBL / URIBL / DBL style) for the spam engine.

Two kinds of list:

* ``domain`` lists (Spamhaus DBL, URIBL, SURBL): the *registered domain* of
  every URL host is looked up as ``<domain>.<zone>`` (A record).
* ``ip`` lists (Spamhaus ZEN/SBL, SURBL IP…): IP literals in URLs (and,
  optionally, the client IP) are looked up with reversed octets
  (``2.0.0.192.<zone>``) or, for IPv6, reversed nibbles.

Answers are ``127.0.0.x`` codes.  Only codes inside 127.0.0.0/8 count;
127.0.0.1 and 127.255.255.0/24 are the lists' "query refused / error"
signals and are never a listing (logged instead).  ``codes`` restricts to
given answers.

The registered domain comes from the Public Suffix List bundled with the
``publicsuffixlist`` package (no network access).

All lookups of one message run concurrently on a small thread pool and
share one deadline (``time_budget``); whatever has not answered by then
contributes no evidence and is logged.  Answers (listed and not listed) are
cached for their DNS TTL (negative: SOA negative TTL), bounded in size and
capped at ``cache_max_ttl``; errors and timeouts are not cached.
"""

from __future__ import annotations

import concurrent.futures as cf
import ipaddress
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Optional

import dns.exception
import dns.name
import dns.resolver
import dns.reversename

from ..effects.resolver import TtlCache, negative_ttl
from .base import Check, Evidence, MessageView, ScanContext

if TYPE_CHECKING:
    from publicsuffixlist import PublicSuffixList

log = logging.getLogger("outpost.dnslists")

KINDS = ("domain", "ip")
_REFUSED = ipaddress.ip_network("127.255.255.0/24")
_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


@dataclass(frozen=True)
class DnsList:
    """One list: ``zone``, ``kind`` (domain|ip), ``points`` per message when
    anything is listed, optional accepted ``codes`` ("127.0.1.2", …) and an
    evidence ``name`` (default ``url_listed_dns:<zone>``)."""

    zone: str
    kind: str = "domain"
    points: float = 3.0
    codes: tuple[str, ...] = ()
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "zone", self.zone.strip(".").lower())
        object.__setattr__(self, "codes", tuple(self.codes))
        if not self.zone or " " in self.zone:
            raise ValueError(f"dnslists: invalid zone {self.zone!r}")
        if self.kind not in KINDS:
            raise ValueError(f"dnslists: kind of {self.zone} must be domain or ip")
        for c in self.codes:
            try:
                if ipaddress.ip_address(c) not in _LOOPBACK:
                    raise ValueError
            except ValueError:
                raise ValueError(f"dnslists: code {c!r} of {self.zone} is not 127.x.x.x") from None
        if not self.name:
            object.__setattr__(self, "name", f"url_listed_dns:{self.zone}")


@dataclass(frozen=True)
class DnsListSettings:
    """``dnslists:`` settings."""

    lists: tuple[DnsList, ...] = ()
    time_budget: float = 1.5        # per message, all lookups together
    query_timeout: float = 1.0      # per lookup
    max_lookups: int = 30           # per message and list
    check_client_ip: bool = False   # also look up the submitting client's IP on ip lists
    skip_domains: tuple[str, ...] = ()  # never looked up (own domains, big providers)
    workers: int = 8
    cache_max_entries: int = 20000
    cache_max_ttl: float = 3600.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "lists", tuple(self.lists))
        object.__setattr__(self, "skip_domains",
                           tuple(d.strip(".").lower() for d in self.skip_domains))
        if not 0 < self.query_timeout <= self.time_budget:
            raise ValueError("dnslists.query_timeout must be > 0 and <= time_budget")
        if self.max_lookups < 1 or self.workers < 1 or self.cache_max_entries < 1:
            raise ValueError("dnslists.max_lookups, workers, cache_max_entries must be >= 1")
        if self.cache_max_ttl < 0:
            raise ValueError("dnslists.cache_max_ttl must be >= 0")


@dataclass(frozen=True)
class Listing:
    """``item`` (domain or IP) is listed in ``dnslist`` with ``codes``."""

    dnslist: DnsList
    item: str
    codes: tuple[str, ...]


def _public_suffix_list() -> "PublicSuffixList":
    """The bundled Public Suffix List.  Imported only when DNS lists are on:
    Debian 12 does not package ``publicsuffixlist``, and everything else runs
    without it."""
    try:
        from publicsuffixlist import PublicSuffixList
    except ImportError:
        raise ValueError("spam.dnslists needs the Python package publicsuffixlist "
                         "(pip install publicsuffixlist)") from None
    return PublicSuffixList()


class DnsListChecker:
    """Looks items up in the configured lists (thread-safe)."""

    def __init__(self, settings: DnsListSettings, resolver: dns.resolver.Resolver,
                 clock: Callable[[], float] = time.monotonic,
                 psl: Optional[PublicSuffixList] = None) -> None:
        self.settings = settings
        self.resolver = resolver
        self.cache: TtlCache[str, tuple[str, ...]] = TtlCache(settings.cache_max_entries, clock)
        self.psl = psl or _public_suffix_list()
        self._pool = cf.ThreadPoolExecutor(max_workers=settings.workers,
                                           thread_name_prefix="outpost-dnsl")
        self._lock = threading.Lock()
        self.queries = 0            # DNS queries sent (not cache hits); for stats/tests

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- item extraction -----------------------------------------------------
    def registered_domain(self, host: str) -> Optional[str]:
        """eTLD+1 of a host name (None for IPs, suffixes, single labels)."""
        host = host.strip(".").lower()
        try:
            ipaddress.ip_address(host.strip("[]"))
            return None
        except ValueError:
            pass
        if "." not in host:
            return None
        return self.psl.privatesuffix(host)

    def _skipped(self, domain: str) -> bool:
        return any(domain == s or domain.endswith("." + s) for s in self.settings.skip_domains)

    @staticmethod
    def ip_query_label(ip: str) -> str:
        """Reversed octets (IPv4) / nibbles (IPv6) without the reverse zone."""
        rev = dns.reversename.from_address(ip)
        return rev.relativize(dns.name.from_text(
            "in-addr.arpa." if ":" not in ip else "ip6.arpa.")).to_text()

    # -- lookups ---------------------------------------------------------------
    def _query(self, qname: str, deadline: float) -> tuple[str, ...]:
        hit = self.cache.get(qname)
        if hit is not None:
            return hit
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise dns.exception.Timeout()
        with self._lock:
            self.queries += 1
        lifetime = min(self.settings.query_timeout, remaining)
        try:
            ans = self.resolver.resolve(qname, "A", lifetime=lifetime,
                                        raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN as exc:
            ttl = negative_ttl(next(iter(exc.responses().values()), None),
                                self.settings.cache_max_ttl)
            self.cache.put(qname, (), min(ttl, self.settings.cache_max_ttl))
            return ()
        if ans.rrset is None:
            ttl = negative_ttl(ans.response, self.settings.cache_max_ttl)
            self.cache.put(qname, (), min(ttl, self.settings.cache_max_ttl))
            return ()
        codes = tuple(sorted(r.address for r in ans.rrset))
        self.cache.put(qname, codes, min(float(ans.rrset.ttl), self.settings.cache_max_ttl))
        return codes

    def _listed_codes(self, lst: DnsList, item: str, codes: tuple[str, ...]) -> tuple[str, ...]:
        good = []
        for c in codes:
            addr = ipaddress.ip_address(c)
            if addr in _REFUSED or c == "127.0.0.1" or addr not in _LOOPBACK:
                log.warning("dnslist %s answered %s for %s: query refused or list error",
                            lst.zone, c, item)
                continue
            if lst.codes and c not in lst.codes:
                continue
            good.append(c)
        return tuple(good)

    def lookup(self, domains: Iterable[str] = (), ips: Iterable[str] = ()) -> list[Listing]:
        """Look up URL host names (reduced to registered domains) on domain
        lists and IPs on ip lists, within the time budget."""
        deadline = time.monotonic() + self.settings.time_budget
        regs: list[str] = []
        for host in domains:
            reg = self.registered_domain(host)
            if reg and reg not in regs and not self._skipped(reg):
                regs.append(reg)
        ip_items: list[str] = []
        for ip in ips:
            try:
                norm = str(ipaddress.ip_address(ip.strip("[]")))
            except ValueError:
                continue
            if norm not in ip_items:
                ip_items.append(norm)
        jobs: dict[cf.Future, tuple[DnsList, str]] = {}
        for lst in self.settings.lists:
            items = regs if lst.kind == "domain" else ip_items
            for item in items[: self.settings.max_lookups]:
                label = item if lst.kind == "domain" else self.ip_query_label(item)
                fut = self._pool.submit(self._query, f"{label}.{lst.zone}.", deadline)
                jobs[fut] = (lst, item)
        if not jobs:
            return []
        done, pending = cf.wait(jobs, timeout=max(0.0, deadline - time.monotonic()))
        for fut in pending:
            fut.cancel()
        if pending:
            log.warning("dnslists: %d of %d lookups unanswered within %.1fs (no evidence): %s",
                        len(pending), len(jobs), self.settings.time_budget,
                        ", ".join(sorted(f"{jobs[f][1]}@{jobs[f][0].zone}" for f in pending)[:5]))
        out = []
        for fut in done:
            lst, item = jobs[fut]
            try:
                codes = fut.result()
            except (dns.exception.DNSException, OSError) as exc:
                log.warning("dnslists: lookup of %s in %s failed: %s", item, lst.zone,
                            exc.__class__.__name__)
                continue
            listed = self._listed_codes(lst, item, codes)
            if listed:
                out.append(Listing(lst, item, listed))
        order = {id(lst): i for i, lst in enumerate(self.settings.lists)}
        out.sort(key=lambda x: (order[id(x.dnslist)], x.item))
        return out


class DnsListCheck(Check):
    """Spam-engine check: one Evidence per list that lists anything in the
    message (URL hosts; IP literals; optionally the client IP)."""

    name = "dnslists"

    def __init__(self, checker: DnsListChecker) -> None:
        self.checker = checker

    def check(self, msg: MessageView, ctx: ScanContext) -> list[Evidence]:
        hosts = [u.host for u in msg.urls if u.host]
        ips = []
        for h in hosts:
            try:
                ipaddress.ip_address(h.strip("[]"))
                ips.append(h)
            except ValueError:
                pass
        if self.checker.settings.check_client_ip and ctx.client_ip:
            ips.append(ctx.client_ip)
        listings = self.checker.lookup(hosts, ips)
        by_list: dict[str, list[Listing]] = {}
        lists: dict[str, DnsList] = {}
        for li in listings:
            by_list.setdefault(li.dnslist.name, []).append(li)
            lists[li.dnslist.name] = li.dnslist
        return [Evidence(name, lists[name].points,
                         f"{lists[name].zone}: " + ", ".join(
                             f"{li.item} ({'/'.join(li.codes)})" for li in items)[:300])
                for name, items in by_list.items()]

    def close(self) -> None:
        self.checker.close()
