"""DNS block-list lookups against a real NSD server."""

from __future__ import annotations

import logging
import time

import pytest

from outpost.effects.resolver import ResolverSettings, make_resolver
from outpost.spam.base import MessageView, ScanContext, Url
from outpost.spam.dnslists import DnsList, DnsListCheck, DnsListChecker, DnsListSettings
from tests.services.dns import DnsServer, silent_udp_port

DBL = "\n".join([
    "$TTL 60",
    "@ 60 IN SOA ns.invalid. h.invalid. 1 3600 600 86400 30",
    "@ IN NS ns.invalid.",
    "evil.example   A 127.0.1.2",
    "spam.co.uk     A 127.0.1.4",
    "refused.example A 127.255.255.254",   # Spamhaus 'query via public resolver'
    "uribl1.example  A 127.0.0.1",         # URIBL 'query refused'
    "short.example 1 A 127.0.1.2",
])
IPL = "\n".join([
    "2.2.0.192 A 127.0.0.2",
    "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2 A 127.0.0.3",
])


@pytest.fixture(scope="module")
def server():
    with DnsServer({"dbl.test": DBL, "ip.test": IPL}, broken_zones=["broken.test"]) as s:
        yield s


def make(server_port, lists=None, **kw):
    res = make_resolver(ResolverSettings(nameservers=("127.0.0.1",), port=server_port,
                                         timeout=1.0, lifetime=1.0))
    lists = lists or (DnsList("dbl.test", "domain", 4.0), DnsList("ip.test", "ip", 2.0))
    kw.setdefault("time_budget", 1.5)
    c = DnsListChecker(DnsListSettings(lists=lists, **kw), res)
    return c


def view(*hosts):
    return MessageView(headers=(), text="", html="",
                       urls=tuple(Url(f"http://{h}/", h) for h in hosts),
                       attachments=(), size=0, partial=False)


CTX = ScanContext(user="u", identity="i", sender="a@example.test", client_ip="192.0.2.2")


def test_registered_domain(server):
    c = make(server.port)
    assert c.registered_domain("www.Evil.example") == "evil.example"
    assert c.registered_domain("a.b.spam.co.uk") == "spam.co.uk"
    assert c.registered_domain("co.uk") is None
    assert c.registered_domain("192.0.2.1") is None
    assert c.registered_domain("localhost") is None
    c.close()


def test_domain_and_ip_listings(server):
    c = make(server.port)
    hits = c.lookup(["www.evil.example", "x.y.spam.co.uk", "good.example"],
                    ["192.0.2.2", "2001:db8::1", "198.51.100.1"])
    got = [(h.dnslist.zone, h.item, h.codes) for h in hits]
    assert got == [("dbl.test", "evil.example", ("127.0.1.2",)),
                   ("dbl.test", "spam.co.uk", ("127.0.1.4",)),
                   ("ip.test", "192.0.2.2", ("127.0.0.2",)),
                   ("ip.test", "2001:db8::1", ("127.0.0.3",))]
    c.close()


def test_error_codes_are_not_listings(server, caplog):
    c = make(server.port)
    with caplog.at_level(logging.WARNING, "outpost.dnslists"):
        assert c.lookup(["refused.example", "uribl1.example"]) == []
    assert "query refused" in caplog.text
    c.close()


def test_codes_filter(server):
    c = make(server.port, lists=(DnsList("dbl.test", "domain", 1.0, codes=("127.0.1.4",)),))
    assert [h.item for h in c.lookup(["evil.example", "spam.co.uk"])] == ["spam.co.uk"]
    c.close()


def test_check_evidence(server):
    c = make(server.port, check_client_ip=True)
    ev = DnsListCheck(c).check(view("www.evil.example", "evil.example", "good.example",
                                    "spam.co.uk"), CTX)
    assert [(e.name, e.points) for e in ev] == [("url_listed_dns:dbl.test", 4.0),
                                                ("url_listed_dns:ip.test", 2.0)]
    assert ev[0].detail == "dbl.test: evil.example (127.0.1.2), spam.co.uk (127.0.1.4)"
    assert "192.0.2.2" in ev[1].detail
    c.close()
    other = DnsListCheck(make(server.port))
    assert other.check(view("good.example"), CTX) == []
    other.close()


def test_cache_positive_and_negative(server):
    c = make(server.port)
    c.lookup(["evil.example", "good.example"])
    n = c.queries
    assert n == 2
    hits = c.lookup(["evil.example", "good.example"])
    assert c.queries == n                      # both answers (incl. NXDOMAIN) cached
    assert [h.item for h in hits] == ["evil.example"]
    c.close()


def test_cache_ttl_expiry(server):
    now = [0.0]
    res = make_resolver(ResolverSettings(nameservers=("127.0.0.1",), port=server.port))
    c = DnsListChecker(DnsListSettings(lists=(DnsList("dbl.test"),)), res, clock=lambda: now[0])
    c.lookup(["short.example", "evil.example"])
    now[0] += 5                                 # short.example TTL 1, evil.example 60
    c.lookup(["short.example", "evil.example"])
    assert c.queries == 3
    c.close()


def test_skip_domains_and_max_lookups(server):
    c = make(server.port, skip_domains=("evil.example",), max_lookups=1)
    assert c.lookup(["www.evil.example", "good.example", "spam.co.uk"]) == []
    assert c.queries == 1
    c.close()


def test_servfail_gives_no_evidence(server, caplog):
    c = make(server.port, lists=(DnsList("broken.test"), DnsList("dbl.test")))
    with caplog.at_level(logging.WARNING, "outpost.dnslists"):
        hits = c.lookup(["evil.example"])
    assert [h.dnslist.zone for h in hits] == ["dbl.test"]
    assert "broken.test failed" in caplog.text
    c.lookup(["evil.example"])
    assert c.queries == 3                       # the SERVFAIL was not cached
    c.close()


def test_timeout_bounded(caplog):
    with silent_udp_port() as port:
        c = make(port, time_budget=0.5, query_timeout=0.5)
        t0 = time.monotonic()
        with caplog.at_level(logging.WARNING, "outpost.dnslists"):
            ev = DnsListCheck(c).check(view(*[f"h{i}.example" for i in range(20)]), CTX)
        elapsed = time.monotonic() - t0
        c.close()
    assert ev == []
    assert elapsed < 1.5, elapsed
    assert "unanswered" in caplog.text or "Timeout" in caplog.text


def test_settings_validation():
    with pytest.raises(ValueError, match="kind"):
        DnsList("x.test", "url")
    with pytest.raises(ValueError, match="127"):
        DnsList("x.test", codes=("10.0.0.1",))
    with pytest.raises(ValueError, match="query_timeout"):
        DnsListSettings(query_timeout=2, time_budget=1)
