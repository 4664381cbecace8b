"""SPF checks against a real NSD server on loopback."""

from __future__ import annotations

import time

import pytest
import spf as pyspf

from outpost.effects.resolver import ResolverSettings, make_resolver
from outpost.effects.spf import SpfChecker, SpfError, SpfResult, SpfSettings, sender_domain
from tests.services.dns import DnsServer, silent_udp_port

EGRESS = ("198.51.100.7", "198.51.100.8")

ZONE = "\n".join([
    'pass      60 TXT "v=spf1 ip4:198.51.100.7 ip4:198.51.100.8 -all"',
    'partial   TXT "v=spf1 ip4:198.51.100.7 -all"',
    'soft      TXT "v=spf1 ip4:192.0.2.1 ~all"',
    'neutral   TXT "v=spf1 ?all"',
    'inc       TXT "v=spf1 include:a.inc.example.test -all"',
    'a.inc     TXT "v=spf1 include:b.inc.example.test -all"',
    'b.inc     TXT "v=spf1 ip4:198.51.100.0/24 -all"',
    'cust      TXT "v=spf1 a mx include:spf.relay.example.test -all"',
    'spf.relay TXT "v=spf1 ip4:198.51.100.7 ip6:2001:db8::/32 " "ip4:198.51.100.8 -all"',
    'nospf     TXT "hello"',
    # 10 DNS mechanisms: allowed; 11: permerror (RFC 7208 4.6.4)
    'ten       TXT "v=spf1 ' + " ".join(f"a:h{i}.example.test" for i in range(1, 11)) + ' -all"',
    'eleven    TXT "v=spf1 ' + " ".join(f"a:h{i}.example.test" for i in range(1, 12)) + ' -all"',
    *[f"h{i} A 192.0.2.{i}" for i in range(1, 12)],
    # two void lookups allowed, the third is a permerror
    'void2     TXT "v=spf1 a:n1.void.example.test a:n2.void.example.test ip4:198.51.100.0/24 -all"',
    'void3     TXT "v=spf1 a:n1.void.example.test a:n2.void.example.test a:n3.void.example.test'
    ' ip4:198.51.100.0/24 -all"',
    'twice     TXT "v=spf1 -all"',
    'twice     TXT "v=spf1 +all"',
    'incbroken TXT "v=spf1 include:x.broken.test -all"',
    'short   2 TXT "v=spf1 ip4:198.51.100.0/24 -all"',
    'loop      CNAME loop2',
    'loop2     CNAME loop',
    'aloop     TXT "v=spf1 a:loop.example.test ip4:198.51.100.0/24 -all"',
])


@pytest.fixture(scope="module")
def server():
    with DnsServer({"example.test": ZONE}, broken_zones=["broken.test"]) as s:
        yield s


@pytest.fixture
def resolver(server):
    return make_resolver(ResolverSettings(nameservers=("127.0.0.1",), port=server.port,
                                          timeout=1.0, lifetime=1.0))


def checker(resolver, **kw) -> SpfChecker:
    kw.setdefault("egress_ips", EGRESS)
    kw.setdefault("relay_spf_domain", "spf.relay.example.test")
    return SpfChecker(SpfSettings(**kw), resolver)


@pytest.mark.parametrize("name,expected", [
    ("pass", "pass"),
    ("partial", "fail"),          # second egress IP not authorised: worst wins
    ("soft", "softfail"),
    ("neutral", "neutral"),
    ("inc", "pass"),              # include chain of depth 2
    ("cust", "pass"),             # include of the relay's SPF domain, split TXT strings
    ("nospf", "none"),
    ("missing", "none"),          # NXDOMAIN
    ("ten", "fail"),              # exactly 10 lookups: evaluated normally
    ("eleven", "permerror"),      # 11 lookups
    ("void2", "pass"),
    ("void3", "permerror"),
    ("twice", "permerror"),       # two SPF records
    ("loop", "none"),             # CNAME loop on the SPF name: no record
    ("aloop", "pass"),            # CNAME loop in a mechanism: no data, continue
])
def test_results(resolver, name, expected):
    res = checker(resolver).check(f"{name}.example.test")
    assert res.result == expected, res
    assert not res.cached
    assert {r.ip for r in res.per_ip} == set(EGRESS)


def test_partial_names_failing_ip(resolver):
    res = checker(resolver).check("partial.example.test")
    assert res.ip == "198.51.100.8"
    assert {r.ip: r.result for r in res.per_ip} == {"198.51.100.7": "pass", "198.51.100.8": "fail"}


def test_limits_explained(resolver):
    c = checker(resolver)
    assert "Too many DNS lookups" in c.check("eleven.example.test").explanation
    assert "Void lookup limit" in c.check("void3.example.test").explanation


def test_servfail_is_temperror(resolver):
    c = checker(resolver)
    assert c.check("x.broken.test").result == "temperror"
    res = c.check("incbroken.example.test")
    assert res.result == "temperror" and "SERVFAIL" in res.explanation
    # temperrors are not cached
    assert not c.check("incbroken.example.test").cached


def test_timeout_bounded_by_budget():
    with silent_udp_port() as port:
        r = make_resolver(ResolverSettings(nameservers=("127.0.0.1",), port=port,
                                           timeout=0.3, lifetime=0.3))
        c = checker(r, query_timeout=0.3, time_budget=0.8)
        t0 = time.monotonic()
        res = c.check("pass.example.test")
        elapsed = time.monotonic() - t0
    assert res.result == "temperror"
    assert elapsed < 2.0, elapsed


def test_cache_hit_and_ttl_expiry(resolver):
    now = [1000.0]
    c = SpfChecker(SpfSettings(egress_ips=EGRESS), resolver, clock=lambda: now[0])
    first = c.check("short.example.test")
    assert first.result == "pass" and not first.cached
    second = c.check("short.example.test")
    assert second.cached and second.result == "pass"
    now[0] += 2.5                 # record TTL is 2 s
    assert not c.check("short.example.test").cached
    # the 60 s TTL record stays cached after 2.5 s
    c.check("pass.example.test")
    now[0] += 2.5
    assert c.check("pass.example.test").cached


def test_cache_bounded(resolver):
    c = checker(resolver, cache_max_entries=2)
    c.check("pass.example.test")      # 2 entries (one per egress IP)
    c.check("soft.example.test")      # evicts pass
    assert not c.check("pass.example.test").cached


def test_resolvers_do_not_leak_between_checkers(resolver):
    with silent_udp_port() as port:
        dead = make_resolver(ResolverSettings(nameservers=("127.0.0.1",), port=port,
                                              timeout=0.2, lifetime=0.2))
        bad = checker(dead, query_timeout=0.2, time_budget=0.5)
        good = checker(resolver)
        assert bad.check("pass.example.test").result == "temperror"
        assert good.check("pass.example.test").result == "pass"
    # outside a check pyspf uses its own lookup again (dispatcher falls back)
    assert pyspf.DNSLookup._outpost_dispatcher


@pytest.mark.parametrize("action,expected", [
    ("tag", ("tag", None)),
    ("tempfail", ("tempfail", ("451", "4.7.23"))),
    ("reject", ("reject", ("550", "5.7.23"))),
])
def test_decide_fail(resolver, action, expected):
    c = checker(resolver, fail_action=action)
    d = c.decide(c.check("partial.example.test"))
    assert d.action == expected[0]
    assert d.header == ("X-Outpost-SPF",
                        "fail (relay 198.51.100.8 not authorized by partial.example.test)")
    if expected[1] is None:
        assert d.smtp is None
    else:
        assert d.smtp == (*expected[1], "SPF for partial.example.test does not authorize "
                          "this relay; add include:spf.relay.example.test")


@pytest.mark.parametrize("result", ["pass", "softfail", "neutral", "none", "temperror", "permerror"])
def test_decide_non_fail_tags(resolver, result):
    c = checker(resolver, fail_action="reject")
    res = SpfResult("d.example", result, "why\r\nX-Injected: 1", False, EGRESS[0], ())
    d = c.decide(res)
    assert d.action == "tag" and d.smtp is None
    assert d.header[1].startswith(result + " ")
    assert "\n" not in d.header[1] and "\r" not in d.header[1]


def test_settings_validation():
    with pytest.raises(ValueError, match="egress_ips"):
        SpfSettings(egress_ips=("not-an-ip",))
    with pytest.raises(ValueError, match="spf.action"):
        SpfSettings(fail_action="drop")
    with pytest.raises(ValueError, match="query_timeout"):
        SpfSettings(query_timeout=10, time_budget=5)
    with pytest.raises(SpfError):
        SpfChecker(SpfSettings(), None)


def test_sender_domain():
    assert sender_domain("<Alice@Example.COM>") == "example.com"
    assert sender_domain("") == ""


def test_reply_text_is_safe(resolver):
    c = checker(resolver, fail_action="reject")
    d = c.decide(SpfResult("ev%il\r\n.example", "fail", "x", False, EGRESS[0], ()))
    assert "%" not in d.smtp[2] and "\n" not in d.smtp[2] and "%" not in d.header[1]
