"""Configuration parsing: typed values, located errors, unknown keys."""

import os
import re
import textwrap

import pytest

from outpost.config import ConfigError, load_config, parse_config, parse_rate

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "contrib", "outpost.yaml")

BASE = textwrap.dedent("""\
    report_abuse_to: abuse@example.net
    domains: [example.com, example.org]
    users:
      - name: webfarm
        type: ip
        ips: [192.0.2.0/28]
        domains: [example.com]
      - name: alice
        type: login
        logins: [alice@example.com]
        domains: [example.com]
    """)


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "t.yaml")
    return str(exc.value)


def test_shipped_example_is_valid():
    config = load_config(EXAMPLE)
    names = [u.name for u in config.users]
    assert names == ["webfarm", "example.org", "alice", "scripts"]
    webfarm = config.users[0]
    assert [str(n) for n in webfarm.ips] == ["192.0.2.0/28", "2001:db8::/64"]
    assert webfarm.identity_headers[1].regex.pattern == r"^(\d+):"
    assert webfarm.identity_headers[1].remove is True
    assert config.users[2].policy.connection_limit == 20
    assert config.users[0].policy.connection_limit is None
    assert [r.label for r in webfarm.policy.limits.messages] == ["60/1m", "1000/1h", "10000/1d"]
    assert webfarm.policy.lock.window == 600 and webfarm.policy.lock.duration == 3600
    assert webfarm.policy.lock.after_spam == 5 and webfarm.policy.spam.on_spam == "reject"
    assert [(k.selector, k.algorithm) for k in config.domains[0].dkim] == [("s2026", "rsa"), ("ed2026", "ed25519")]
    assert config.spf.egress_ips == ("198.51.100.7", "2001:db8::25") and config.spf.fail_action == "tag"
    assert config.reports.to == "abuse@example.net" and config.reports.smtp.port == 10587
    assert config.reports.listener_auth == "sasl" and config.reports.smtp.username == "outpost-reports"
    assert config.users[3].type == "local" and config.users[3].domains == {"example.com"}


def test_error_names_path_and_line():
    msg = error_of(BASE.replace("192.0.2.0/28", "192.0.2.300"))
    assert msg == "t.yaml:6: users[0].ips[0]: '192.0.2.300' is not an IP network"


def test_unknown_keys_are_errors_at_every_level():
    assert re.match(r"t\.yaml:1: colour: unknown key", error_of("colour: red\n" + BASE))
    msg = error_of(BASE.replace("    type: login", "    type: login\n    logn: x"))
    assert "users[1].logn: unknown key" in msg and "t.yaml:10:" in msg
    msg = error_of(BASE + "defaults:\n  limits:\n    mesages: [60/1m]\n")
    assert "defaults.limits.mesages: unknown key (did you mean 'messages'?)" in msg


def test_duplicate_user_same_network_unregistered_domain():
    assert "duplicate user name 'webfarm'" in error_of(BASE.replace("name: alice", "name: webfarm"))
    dup = BASE.replace("        logins: [alice@example.com]\n", "        logins: [alice@example.com]\n").replace(
        "  - name: alice\n    type: login\n    logins: [alice@example.com]",
        "  - name: other\n    type: ip\n    ips: [192.0.2.0/28]")
    assert "network 192.0.2.0/28 is already listed for user 'webfarm'" in error_of(dup)
    msg = error_of(BASE.replace("domains: [example.com]\n  - name: alice", "domains: [example.net]\n  - name: alice"))
    assert "users[0].domains[0]: domain 'example.net' is not registered" in msg


def test_duplicate_yaml_key_and_syntax_error():
    assert "t.yaml:2: report_abuse_to: duplicate key" in error_of(
        "report_abuse_to: a@b.example\n" + BASE)
    assert error_of("users: [\n").startswith("t.yaml:2: YAML syntax error")


def test_type_errors():
    assert "connection_limit: expected an integer" in error_of("connection_limit: ten\n" + BASE)
    assert "connection_limit: 0 is below the minimum 1" in error_of("connection_limit: 0\n" + BASE)
    assert "users[0].type: 'cidr' is not one of: ip, domain, login" in error_of(BASE.replace("type: ip", "type: cidr"))
    assert "is not a rate like 60/1m" in error_of(BASE + "defaults: {limits: {messages: [sixty]}}\n")
    assert "report_abuse_to: 'nobody' is not an e-mail address" in error_of(
        BASE.replace("abuse@example.net", "nobody"))
    assert "required key 'users' is missing" in error_of("report_abuse_to: a@b.example\ndomains: [b.example]\n")


def test_defaults_inherited_and_overridden_per_key():
    text = BASE + textwrap.dedent("""\
        defaults:
          limits: {messages: ["60/1m"], recipients: ["5000/1d"], max_recipients: 100}
          lock: {after_limit_hits: 3}
        """)
    text = text.replace("    logins: [alice@example.com]\n",
                        "    logins: [alice@example.com]\n    limits: {messages: [\"10/1m\"]}\n    mode: monitor\n")
    config = parse_config(text)
    webfarm, alice = config.users
    assert [r.label for r in webfarm.policy.limits.messages] == ["60/1m"]
    assert [r.label for r in alice.policy.limits.messages] == ["10/1m"]
    assert [r.label for r in alice.policy.limits.recipients] == ["5000/1d"]     # inherited
    assert alice.policy.limits.max_recipients == 100
    assert alice.policy.mode == "monitor" and webfarm.policy.mode == "enforce"
    assert alice.policy.lock.after_limit_hits == 3


def test_domain_user_sends_as_its_domain():
    config = parse_config(BASE + "  - name: Example.ORG\n    type: domain\n")
    user = config.users[-1]
    assert user.name == "example.org" and user.domains == {"example.org"}
    assert "domain 'example.net' is not registered" in error_of(BASE + "  - name: example.net\n    type: domain\n")


def test_ipv4_mapped_network_is_stored_as_ipv4():
    config = parse_config(BASE.replace("192.0.2.0/28", "'::ffff:198.51.100.0/120'"))
    assert str(config.users[0].ips[0]) == "198.51.100.0/24"


@pytest.mark.parametrize("text,limit,window", [("60/1m", 60, 60), ("1000/1h", 1000, 3600),
                                                ("10000/1d", 10000, 86400), ("5/10s", 5, 10), ("3/m", 3, 60)])
def test_parse_rate(text, limit, window):
    rate = parse_rate(text)
    assert (rate.limit, rate.window, rate.label) == (limit, window, text)


def test_check_config_cli_exit_codes(tmp_path, capsys):
    from outpost.cli import main
    good = tmp_path / "good.yaml"
    good.write_text(BASE + "reports: {enabled: false}\n")
    assert main(["check-config", "-c", str(good)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(BASE.replace("192.0.2.0/28", "192.0.2.300"))
    assert main(["check-config", "-c", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml:6: users[0].ips[0]: '192.0.2.300' is not an IP network" in err


def test_store_memory_may_be_written_without_the_colon():
    assert parse_config("store: memory\n" + BASE).store == "memory:"
    assert parse_config("store: 'memory:'\n" + BASE).store == "memory:"
    assert "is not a store URL" in error_of("store: postgres://x\n" + BASE)


def test_spam_bayes_min_clues_key():
    config = parse_config("spam:\n  bayes: {min_clues: 5, full_at: 0.9}\n" + BASE, "t.yaml")
    assert (config.spam.bayes.min_clues, config.spam.bayes.full_at) == (5, 0.9)
    assert "min_clues" in error_of("spam:\n  bayes: {min_clues: 0}\n" + BASE)
