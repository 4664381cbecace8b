"""Domain onboarding check against a real NSD server."""

from __future__ import annotations

import pytest

from outpost.effects.dkim import DkimKey, DkimSettings, keygen, load_keys, zone_txt
from outpost.effects.domaincheck import check_domain, suggest_spf
from outpost.effects.resolver import ResolverSettings, make_resolver
from outpost.effects.spf import SpfSettings
from tests.services.dns import DnsServer

SPF = SpfSettings(egress_ips=("198.51.100.7",), relay_spf_domain="spf.relay.test")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("k")
    r_path, r_txt = keygen("good.test", "s1", "rsa", 1024, str(d))
    e_path, e_txt = keygen("good.test", "s2", "ed25519", 0, str(d))
    _, other_txt = keygen("bad.test", "s1", "rsa", 1024, str(d))
    zones = {
        "relay.test": 'spf TXT "v=spf1 ip4:198.51.100.7 -all"',
        "good.test": "\n".join([
            '@ TXT "v=spf1 mx include:spf.relay.test -all"',
            f"s1._domainkey TXT ( {zone_txt(r_txt)} )",
            f"s2._domainkey TXT ( {zone_txt(e_txt)} )",
            '_dmarc TXT "v=DMARC1; p=reject; rua=mailto:d@good.test"',
        ]),
        "bad.test": "\n".join([
            '@ TXT "v=spf1 mx ip4:192.0.2.1 ~all"',
            f"s1._domainkey TXT ( {zone_txt(other_txt)} )",
        ]),
    }
    keys = load_keys(DkimSettings(keys=(DkimKey("good.test", "s1", r_path),
                                        DkimKey("good.test", "s2", e_path, "ed25519"),
                                        DkimKey("bad.test", "s1", r_path),
                                        DkimKey("bad.test", "s9", e_path, "ed25519"))))
    with DnsServer(zones) as s:
        yield make_resolver(ResolverSettings(nameservers=("127.0.0.1",), port=s.port)), keys


def test_good_domain(env):
    resolver, keys = env
    rep = check_domain("good.test", resolver, SPF, keys["good.test"])
    assert rep.ok
    assert rep.spf.record == "v=spf1 mx include:spf.relay.test -all"
    assert rep.spf.results == (("198.51.100.7", "pass"),) and rep.spf.suggestion == ""
    assert [(d.selector, d.ok) for d in rep.dkim] == [("s1", True), ("s2", True)]
    assert rep.dmarc.policy == "reject" and not rep.dmarc.warning
    assert rep.format().startswith("Domain good.test: OK\n")


def test_bad_domain(env):
    resolver, keys = env
    rep = check_domain("bad.test", resolver, SPF, keys["bad.test"])
    assert not rep.ok
    assert rep.spf.results == (("198.51.100.7", "softfail"),)
    assert rep.spf.suggestion == "v=spf1 mx ip4:192.0.2.1 include:spf.relay.test ~all"
    assert [(d.selector, d.problem.split(":")[0]) for d in rep.dkim] == \
        [("s1", "mismatch"), ("s9", "missing")]
    assert rep.dkim[1].expected.startswith('s9._domainkey.bad.test. IN TXT ( "v=DKIM1; k=ed25519; p=')
    assert rep.dmarc.record is None and "no DMARC" in rep.dmarc.warning
    text = rep.format()
    assert "FAILED" in text and 'publish: bad.test. IN TXT "v=spf1 mx ip4:192.0.2.1 ' \
        'include:spf.relay.test ~all"' in text


def test_missing_domain(env):
    resolver, _ = env
    rep = check_domain("none.good.test", resolver, SPF)
    assert not rep.ok and rep.spf.record is None
    assert rep.spf.suggestion == "v=spf1 a mx include:spf.relay.test -all"


def test_suggest_spf():
    assert suggest_spf("v=spf1 redirect=_spf.x.test", "r.test") == \
        "v=spf1 include:r.test redirect=_spf.x.test"
    assert suggest_spf("v=spf1 mx", "r.test") == "v=spf1 mx include:r.test"
