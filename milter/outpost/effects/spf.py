"""SPF check of the sender's domain against the relay's egress IPs (pyspf).

Outpost relays mail *out*: the question is not "is this client allowed" but
"will receivers accept mail for this domain from our egress IPs".  The
domain's SPF policy is therefore evaluated (pyspf, RFC 7208 limits: 10 DNS
mechanisms, 2 void lookups) once for every configured egress IP; the worst
result counts.

DNS goes through a private dnspython resolver built from settings.  pyspf
only knows a module-global lookup function (``spf.DNSLookup``); Outpost
installs, once, a dispatcher there that uses the resolver of the check
running in the current thread/context (a :class:`contextvars.ContextVar`)
and falls back to pyspf's own function otherwise.  Two checkers with
different resolvers never see each other's configuration.

Results are cached across messages per ``(domain, egress ip)`` for the
smallest TTL of all DNS answers the evaluation used (negative answers: the
SOA negative TTL), capped by ``cache_max_ttl``; temperrors are not cached.
"""

from __future__ import annotations

import contextvars
import ipaddress
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional, get_args

import dns.exception
import dns.message
import dns.name
import dns.resolver
import spf as pyspf

from outpost.effects.resolver import TtlCache, negative_ttl

#: What an SPF fail does (``spf.action``).
SpfAction = Literal["tag", "tempfail", "reject"]
ACTIONS: tuple[str, ...] = get_args(SpfAction)
#: SPF results from best to worst (for "worst across egress IPs").
SEVERITY = ("pass", "none", "neutral", "temperror", "permerror", "softfail", "fail")
HEADER_NAME = "X-Outpost-SPF"
_SAFE_DOMAIN = re.compile(r"[^A-Za-z0-9._-]")
_DEFAULT_NEGATIVE_TTL = 300


class SpfError(Exception):
    """Misuse of the SPF checker (e.g. no egress IPs configured)."""


@dataclass(frozen=True)
class SpfSettings:
    """``spf:`` and ``relay:`` settings used by the SPF check.

    egress_ips: the relay's public sending addresses (IPv4/IPv6).
    fail_action: what an SPF ``fail`` does: ``tag`` | ``tempfail`` | ``reject``.
    relay_spf_domain: domain customers must ``include:`` (reply/report hint).
    helo: HELO name given to pyspf (``%{h}`` macro).
    query_timeout: bound of one DNS lookup, seconds.
    time_budget: bound of one whole check (all egress IPs), seconds.
    cache_max_entries / cache_max_ttl: cross-message result cache.
    """

    egress_ips: tuple[str, ...] = ()
    fail_action: SpfAction = "tag"
    relay_spf_domain: str = ""
    helo: str = "localhost"
    query_timeout: float = 2.0
    time_budget: float = 5.0
    cache_max_entries: int = 10000
    cache_max_ttl: float = 3600.0

    def __post_init__(self) -> None:
        if isinstance(self.egress_ips, (list, str)):
            object.__setattr__(self, "egress_ips",
                               (self.egress_ips,) if isinstance(self.egress_ips, str)
                               else tuple(self.egress_ips))
        for ip in self.egress_ips:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                raise ValueError(f"relay.egress_ips: {ip!r} is not an IP address") from None
        if self.fail_action not in ACTIONS:
            raise ValueError(f"spf.action must be one of {ACTIONS}, got {self.fail_action!r}")
        if self.relay_spf_domain and _SAFE_DOMAIN.search(self.relay_spf_domain):
            raise ValueError(f"relay.spf_domain {self.relay_spf_domain!r} is not a domain name")
        if not 0 < self.query_timeout <= self.time_budget:
            raise ValueError("spf.query_timeout must be > 0 and <= spf.time_budget")
        if self.cache_max_entries < 1:
            raise ValueError("spf.cache_max_entries must be >= 1")
        if self.cache_max_ttl < 0:
            raise ValueError("spf.cache_max_ttl must be >= 0")


@dataclass(frozen=True)
class SpfIpResult:
    ip: str
    result: str          # pyspf result: pass fail softfail neutral none temperror permerror
    explanation: str
    cached: bool


@dataclass(frozen=True)
class SpfResult:
    """Worst result across egress IPs.  ``ip`` is the egress IP it came
    from; ``per_ip`` has every IP's result."""

    domain: str
    result: str
    explanation: str
    cached: bool
    ip: str
    per_ip: tuple[SpfIpResult, ...]


@dataclass(frozen=True)
class SpfDecision:
    """What the policy core does with an SPF result.

    action: ``tag`` (continue, stamp header) | ``tempfail`` | ``reject``.
    smtp: ``(code, enhanced, text)`` for tempfail/reject, else None.  The
    text is plain ASCII; the adapter must still escape ``%`` for setreply.
    header: ``(name, value)`` to add in every case.
    """

    action: str
    smtp: Optional[tuple[str, str, str]]
    header: tuple[str, str]


# ---------------------------------------------------------------------------
# pyspf DNS hook

_active_lookup: contextvars.ContextVar[Optional[Callable[..., list]]] = \
    contextvars.ContextVar("outpost_spf_lookup", default=None)
_install_lock = threading.Lock()


def _install_dispatcher() -> None:
    """Point ``spf.DNSLookup`` at a dispatcher (once per process)."""
    with _install_lock:
        current = pyspf.DNSLookup
        if getattr(current, "_outpost_dispatcher", False):
            return
        original = current

        def dispatcher(name: str, qtype: str, strict: Any = True, timeout: float = 30) -> list:
            lookup = _active_lookup.get()
            if lookup is None:
                return original(name, qtype, strict, timeout)
            return lookup(name, qtype, timeout)

        dispatcher._outpost_dispatcher = True  # type: ignore[attr-defined]
        pyspf.DNSLookup = dispatcher


def _cname_loop(exc: dns.resolver.NoNameservers) -> bool:
    """True when every server 'failed' only because the CNAME chain in its
    answer loops or is too long (dnspython's ChainTooLong)."""
    errors = exc.kwargs.get("errors") or []
    return bool(errors) and all(isinstance(e[3], dns.message.ChainTooLong) for e in errors)


class _Lookup:
    """DNS lookups for one pyspf evaluation, same output format as pyspf's
    ``DNSLookup_dnspython``; remembers the smallest TTL seen."""

    def __init__(self, resolver: dns.resolver.Resolver, query_timeout: float,
                 deadline: float) -> None:
        self.resolver = resolver
        self.query_timeout = query_timeout
        self.deadline = deadline
        self.min_ttl: Optional[float] = None

    def _ttl(self, ttl: float) -> None:
        self.min_ttl = ttl if self.min_ttl is None else min(self.min_ttl, ttl)

    def __call__(self, name: str, qtype: str, timeout: float) -> list:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise pyspf.TempError("DNS time budget exhausted")
        lifetime = min(timeout, self.query_timeout, remaining)
        try:
            answer = self.resolver.resolve(name, qtype, lifetime=lifetime,
                                           raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN as exc:
            self._ttl(negative_ttl(next(iter(exc.responses().values()), None),
                                  _DEFAULT_NEGATIVE_TTL))
            return []
        except dns.exception.Timeout as exc:
            raise pyspf.TempError(f"DNS timeout for {name} {qtype}: {exc}") from None
        except dns.resolver.NoNameservers as exc:
            if _cname_loop(exc):
                # pyspf's own CNAME handling treats a loop as no data
                self._ttl(_DEFAULT_NEGATIVE_TTL)
                return []
            raise pyspf.TempError(f"DNS error (SERVFAIL) for {name} {qtype}") from exc
        except (dns.name.EmptyLabel, dns.name.LabelTooLong, dns.name.NameTooLong):
            return []
        if answer.rrset is None:
            self._ttl(negative_ttl(answer.response, _DEFAULT_NEGATIVE_TTL))
            return []
        self._ttl(answer.rrset.ttl)
        out = []
        for rdata in answer.rrset:
            if qtype in ("A", "AAAA"):
                out.append(((name, qtype), rdata.address))
            elif qtype == "MX":
                out.append(((name, qtype), (rdata.preference, rdata.exchange)))
            elif qtype == "PTR":
                out.append(((name, qtype), rdata.target.to_text(True)))
            elif qtype in ("TXT", "SPF"):
                out.append(((name, qtype), rdata.strings))
        return out


def evaluate(resolver: dns.resolver.Resolver, ip: str, sender: str, helo: str, *,
             query_timeout: float, deadline: float, strict: Any = True,
             default_explanation: Optional[str] = None) -> tuple[str, str, Optional[float]]:
    """One pyspf evaluation (``spf.query(...).check()``) whose DNS lookups go
    through ``resolver``, bounded by ``deadline`` (time.monotonic()).
    Returns (result, explanation, smallest TTL seen or None)."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return "temperror", "SPF time budget exhausted", None
    _install_dispatcher()
    lookup = _Lookup(resolver, query_timeout, deadline)
    token = _active_lookup.set(lookup)
    try:
        q = pyspf.query(i=ip, s=sender, h=helo, strict=strict,
                        timeout=query_timeout, querytime=remaining)
        if default_explanation is not None:
            q.set_default_explanation(default_explanation)
        result, _code, explanation = q.check()
    finally:
        _active_lookup.reset(token)
    return result, explanation, lookup.min_ttl


# ---------------------------------------------------------------------------

def _clean(text: str, limit: int = 200) -> str:
    """Printable ASCII only, bounded (safe in headers and SMTP replies)."""
    text = "".join(c if 32 <= ord(c) < 127 else " " for c in str(text))
    return " ".join(text.split())[:limit]


def sender_domain(sender: str) -> str:
    """Domain part of an envelope sender, lower-case, '' if none."""
    sender = sender.strip().strip("<>")
    return sender.rpartition("@")[2].rstrip(".").lower() if "@" in sender else ""


class SpfChecker:
    """Evaluates senders' SPF against the egress IPs, with a result cache."""

    def __init__(self, settings: SpfSettings, resolver: dns.resolver.Resolver,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not settings.egress_ips:
            raise SpfError("SPF check needs relay.egress_ips")
        self.settings = settings
        self.resolver = resolver
        self.cache: TtlCache[tuple[str, str], tuple[str, str]] = \
            TtlCache(settings.cache_max_entries, clock)

    def _evaluate(self, domain: str, sender: str, ip: str,
                  deadline: float) -> tuple[str, str, Optional[float]]:
        return evaluate(self.resolver, ip, sender, self.settings.helo,
                        query_timeout=self.settings.query_timeout, deadline=deadline)

    def check(self, domain: str, sender: str = "") -> SpfResult:
        """SPF of ``domain`` (sender defaults to ``postmaster@domain``) for
        every egress IP; never raises for DNS problems (→ temperror)."""
        domain = domain.rstrip(".").lower()
        local = sender.strip().strip("<>").rpartition("@")[0] if "@" in sender else ""
        sender = f"{local or 'postmaster'}@{domain}"   # the policy evaluated is domain's
        deadline = time.monotonic() + self.settings.time_budget
        per_ip = []
        for ip in self.settings.egress_ips:
            key = (domain, ip)
            hit = self.cache.get(key)
            if hit is not None:
                per_ip.append(SpfIpResult(ip, hit[0], hit[1], True))
                continue
            result, explanation, ttl = self._evaluate(domain, sender, ip, deadline)
            explanation = _clean(explanation)
            if result != "temperror":
                ttl_s = self.settings.cache_max_ttl if ttl is None \
                    else min(ttl, self.settings.cache_max_ttl)
                self.cache.put(key, (result, explanation), ttl_s)
            per_ip.append(SpfIpResult(ip, result, explanation, False))
        worst = max(per_ip, key=lambda r: SEVERITY.index(r.result))
        return SpfResult(domain=domain, result=worst.result, explanation=worst.explanation,
                         cached=all(r.cached for r in per_ip), ip=worst.ip,
                         per_ip=tuple(per_ip))

    def decide(self, res: SpfResult) -> SpfDecision:
        """Map a result to an action, SMTP reply and header (see docs)."""
        dom = _SAFE_DOMAIN.sub("?", res.domain)[:253]
        ip = res.ip
        if res.result == "pass":
            value = f"pass (relay {ip} authorized by {dom})"
        elif res.result == "fail":
            value = f"fail (relay {ip} not authorized by {dom})"
        elif res.result == "softfail":
            value = f"softfail (relay {ip} discouraged by {dom})"
        elif res.result == "neutral":
            value = f"neutral (relay {ip} neither authorized nor denied by {dom})"
        elif res.result == "none":
            value = f"none (no SPF record for {dom})"
        else:
            value = f"{res.result} ({dom}: {_clean(res.explanation, 120)})"
        header = (HEADER_NAME, value)
        if res.result != "fail" or self.settings.fail_action == "tag":
            return SpfDecision("tag", None, header)
        hint = (f"; add include:{self.settings.relay_spf_domain}"
                if self.settings.relay_spf_domain else "")
        text = f"SPF for {dom} does not authorize this relay{hint}"
        if self.settings.fail_action == "reject":
            return SpfDecision("reject", ("550", "5.7.23", text), header)
        return SpfDecision("tempfail", ("451", "4.7.23", text), header)
