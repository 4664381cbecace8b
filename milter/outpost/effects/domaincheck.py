"""Onboarding check of a customer domain (``outpost domains check DOMAIN``).

Checks, through the configured resolver:

* SPF: the domain's ``v=spf1`` record and whether it authorises every
  egress IP (pyspf evaluation, same code as the per-message check).  When
  not, a record to publish is suggested (``include:<relay spf domain>``
  added before the final ``all``, or ``v=spf1 a mx include:<relay> -all``).
* DKIM: for every configured key of the domain, the
  ``<selector>._domainkey.<domain>`` TXT record and whether its ``p=``
  equals the configured key's public key (the record to publish is shown).
* DMARC: the ``_dmarc.<domain>`` record (reported; missing is a warning,
  not a failure).

``ok`` is true when SPF passes for all egress IPs and every DKIM selector is
published with the right key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence

import dns.exception
import dns.resolver

from outpost.effects.dkim import LoadedKey, zone_line
from outpost.effects.spf import SpfChecker, SpfSettings


class DnsLookupError(Exception):
    """A TXT lookup failed (timeout, SERVFAIL)."""


def txt_records(resolver: dns.resolver.Resolver, name: str) -> list[str]:
    """TXT records of ``name`` (strings of one record joined); [] if none."""
    try:
        ans = resolver.resolve(name, "TXT", raise_on_no_answer=False, search=False)
    except dns.resolver.NXDOMAIN:
        return []
    except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
        raise DnsLookupError(f"{name} TXT: {exc.__class__.__name__}") from None
    if ans.rrset is None:
        return []
    return [b"".join(r.strings).decode("utf-8", "replace") for r in ans.rrset]


def _tags(text: str) -> dict[str, str]:
    out = {}
    for part in text.split(";"):
        k, sep, v = part.partition("=")
        if sep:
            out[k.strip().lower()] = re.sub(r"\s+", "", v)
    return out


@dataclass(frozen=True)
class SpfReport:
    record: Optional[str]           # None: no SPF record
    results: tuple[tuple[str, str], ...]   # (egress ip, pyspf result)
    ok: bool
    suggestion: str                 # record to publish ('' when ok)
    error: str = ""


@dataclass(frozen=True)
class DkimReport:
    selector: str
    algorithm: str
    name: str                       # <selector>._domainkey.<domain>
    record: Optional[str]           # published record, None if missing
    ok: bool
    problem: str                    # '' | missing | mismatch | revoked | dns error …
    expected: str                   # zone-file line to publish


@dataclass(frozen=True)
class DmarcReport:
    record: Optional[str]
    policy: str                     # p= value or ''
    warning: str


@dataclass(frozen=True)
class DomainReport:
    domain: str
    ok: bool
    spf: SpfReport
    dkim: tuple[DkimReport, ...]
    dmarc: DmarcReport

    def format(self) -> str:
        """Readable multi-line report."""
        out = [f"Domain {self.domain}: {'OK' if self.ok else 'FAILED'}", ""]
        s = self.spf
        out.append(f"SPF   {'ok' if s.ok else 'FAIL'}: {s.record or '(no SPF record)'}")
        if s.error:
            out.append(f"      {s.error}")
        for ip, res in s.results:
            out.append(f"      egress {ip}: {res}")
        if s.suggestion:
            out.append(f"      publish: {self.domain}. IN TXT \"{s.suggestion}\"")
        if not self.dkim:
            out.append("DKIM  (no keys configured for this domain)")
        for d in self.dkim:
            out.append(f"DKIM  {'ok' if d.ok else 'FAIL'}: {d.name} ({d.algorithm})"
                       + (f": {d.problem}" if d.problem else ""))
            if not d.ok:
                out.append(f"      publish: {d.expected}")
        m = self.dmarc
        out.append(f"DMARC {m.record or '(no DMARC record)'}")
        if m.warning:
            out.append(f"      warning: {m.warning}")
        return "\n".join(out) + "\n"


def suggest_spf(record: Optional[str], relay_spf_domain: str) -> str:
    """SPF record that adds ``include:<relay>`` to ``record``."""
    inc = f"include:{relay_spf_domain}"
    if not record:
        return f"v=spf1 a mx {inc} -all"
    terms = record.split()
    for i, t in enumerate(terms):
        if t.lower().lstrip("+-~?") == "all" or t.lower().startswith("redirect="):
            return " ".join(terms[:i] + [inc] + terms[i:])
    return " ".join(terms + [inc])


def check_domain(domain: str, resolver: dns.resolver.Resolver, spf_settings: SpfSettings,
                 dkim_keys: Sequence[LoadedKey] = ()) -> DomainReport:
    """Check ``domain``'s SPF, DKIM and DMARC records (see module doc)."""
    domain = domain.rstrip(".").lower()
    # SPF -------------------------------------------------------------
    error = ""
    try:
        spf_recs = [t for t in txt_records(resolver, domain) if t.lower().startswith("v=spf1")]
    except DnsLookupError as exc:
        spf_recs, error = [], str(exc)
    record = spf_recs[0] if len(spf_recs) == 1 else None
    if len(spf_recs) > 1:
        error = f"{len(spf_recs)} SPF records (must be exactly one)"
    res = SpfChecker(spf_settings, resolver).check(domain)
    results = tuple((r.ip, r.result) for r in res.per_ip)
    spf_ok = res.result == "pass"
    if not spf_ok and res.result in ("temperror", "permerror") and not error:
        error = res.explanation
    suggestion = "" if spf_ok else suggest_spf(record, spf_settings.relay_spf_domain or "<relay>")
    spf = SpfReport(record, results, spf_ok, suggestion, error)
    # DKIM ------------------------------------------------------------
    dk = []
    for key in dkim_keys:
        name = f"{key.spec.selector}._domainkey.{domain}"
        expected = zone_line(domain, key.spec.selector, key.dns_txt)
        try:
            recs = txt_records(resolver, name)
        except DnsLookupError as exc:
            dk.append(DkimReport(key.spec.selector, key.spec.algorithm, name, None, False,
                                 f"DNS error: {exc}", expected))
            continue
        if not recs:
            dk.append(DkimReport(key.spec.selector, key.spec.algorithm, name, None, False,
                                 "missing", expected))
            continue
        rec = recs[0]
        tags = _tags(rec)
        if len(recs) > 1:
            problem = f"{len(recs)} TXT records"
        elif not tags.get("p"):
            problem = "revoked (empty p=)"
        elif tags.get("k", "rsa") != key.spec.algorithm:
            problem = f"k={tags.get('k', 'rsa')} but key is {key.spec.algorithm}"
        elif tags["p"] != key.public_p:
            problem = "mismatch: p= is not the configured key's public key"
        else:
            problem = ""
        dk.append(DkimReport(key.spec.selector, key.spec.algorithm, name, rec, not problem,
                             problem, expected))
    # DMARC -----------------------------------------------------------
    try:
        dm = [t for t in txt_records(resolver, f"_dmarc.{domain}")
              if t.lower().startswith("v=dmarc1")]
        warn = "" if dm else "no DMARC record; consider v=DMARC1; p=none; rua=mailto:…"
    except DnsLookupError as exc:
        dm, warn = [], f"DNS error: {exc}"
    dmarc_rec = dm[0] if dm else None
    policy = _tags(dmarc_rec).get("p", "") if dmarc_rec else ""
    if len(dm) > 1:
        warn = f"{len(dm)} DMARC records (receivers ignore all)"
    dmarc = DmarcReport(dmarc_rec, policy, warn)
    ok = spf.ok and all(d.ok for d in dk)
    return DomainReport(domain, ok, spf, tuple(dk), dmarc)
