"""User mapping: login, login domain, longest-prefix network."""

import ipaddress

from outpost.core.mapping import PrefixTable, UserIndex, parse_client_ip


def test_parse_client_ip_variants():
    assert str(parse_client_ip("192.0.2.1")) == "192.0.2.1"
    assert str(parse_client_ip("::ffff:192.0.2.1")) == "192.0.2.1"
    assert str(parse_client_ip("IPv6:2001:db8::1")) == "2001:db8::1"
    assert str(parse_client_ip("[192.0.2.1]")) == "192.0.2.1"
    assert parse_client_ip("unknown") is None
    assert parse_client_ip("") is None
    assert parse_client_ip(None) is None
    assert parse_client_ip("1.2.3.4\r\nX") is None


def test_longest_prefix_wins_and_families_are_separate():
    t = PrefixTable()
    t.add(ipaddress.ip_network("10.0.0.0/8"), "wide")
    t.add(ipaddress.ip_network("10.1.0.0/16"), "narrow")
    t.add(ipaddress.ip_network("10.1.2.3/32"), "host")
    t.add(ipaddress.ip_network("::/0"), "v6-default")
    assert t.lookup(ipaddress.ip_address("10.1.2.3")) == "host"
    assert t.lookup(ipaddress.ip_address("10.1.9.9")) == "narrow"
    assert t.lookup(ipaddress.ip_address("10.200.0.1")) == "wide"
    assert t.lookup(ipaddress.ip_address("11.0.0.1")) is None
    assert t.lookup(ipaddress.ip_address("2001:db8::5")) == "v6-default"
    assert len(t) == 4


def test_resolution_order(config):
    index = UserIndex(config.users)
    ip = ipaddress.ip_address
    assert index.resolve("alice@example.com", None)[0].name == "alice"
    assert index.resolve("ALICE@Example.com", None)[1] == "login"
    user, how = index.resolve("bob@example.org", None)
    assert (user.name, how) == ("example.org", "domain")
    assert index.resolve(None, ip("192.0.2.5"))[0].name == "webfarm"       # /28 beats /24
    assert index.resolve(None, ip("192.0.2.200"))[0].name == "bigfarm"
    assert index.resolve(None, ip("2001:db8::7"))[0].name == "webfarm"
    assert index.resolve(None, ip("198.51.100.1")) == (None, "")
    # an unknown login from a mapped network is that network's user; elsewhere nobody
    assert index.resolve("mallory@evil.example", ip("192.0.2.5"))[0].name == "webfarm"
    assert index.resolve("mallory@evil.example", ip("198.51.100.1")) == (None, "")
