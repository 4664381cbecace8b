"""Every documented spelling of every enumerated key is accepted, whatever
YAML 1.1 makes of it (``off``, ``no``, ``on`` are booleans to PyYAML).
(Every YAML example of the docs: tests/docs/test_examples.py.)"""

from __future__ import annotations

import glob
import os
import re
import textwrap

import pytest

from outpost.config import ConfigError, parse_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BASE = textwrap.dedent("""\
    report_abuse_to: abuse@example.net
    domains: [example.com, example.org]
    users:
      - name: webfarm
        type: ip
        ips: [192.0.2.0/28]
        domains: [example.com]
    """)

#: (where, key, documented values, how to read the parsed value)
ENUMS = [
    ("top", "mode", ("enforce", "monitor"), lambda c: c.defaults.mode),
    ("top", "header_from", ("enforce", "warn", "off"), lambda c: c.defaults.header_from),
    ("top", "on_store_error", ("tempfail", "accept", "local"), lambda c: c.on_store_error),
    ("top", "log_level", ("debug", "info", "warning", "error"), lambda c: c.log_level),
    ("defaults", "mode", ("enforce", "monitor"), lambda c: c.users[0].policy.mode),
    ("defaults", "header_from", ("enforce", "warn", "off"), lambda c: c.users[0].policy.header_from),
    ("user", "mode", ("enforce", "monitor"), lambda c: c.users[0].policy.mode),
    ("user", "header_from", ("enforce", "warn", "off"), lambda c: c.users[0].policy.header_from),
    ("spam_policy", "on_unsure", ("accept", "quarantine", "tempfail", "reject"),
     lambda c: c.defaults.spam.on_unsure),
    ("spam_policy", "on_spam", ("accept", "quarantine", "tempfail", "reject"),
     lambda c: c.defaults.spam.on_spam),
    ("spf", "action", ("tag", "tempfail", "reject"), lambda c: c.spf.fail_action),
    ("spamassassin", "on_error", ("ignore", "tempfail"), lambda c: c.spam.spamassassin.on_error),
    ("spamassassin", "oversize", ("skip", "truncate"), lambda c: c.spam.spamassassin.oversize),
    ("bulk", "on_error", ("ignore", "tempfail"), lambda c: c.spam.bulk.on_error),
    ("log", "target", ("stderr", "syslog", "journal"), lambda c: c.log.target),
    ("log", "format", ("text", "json"), lambda c: c.log.format),
    ("log", "level", ("debug", "info", "warning", "error"), lambda c: c.log.level),
    ("log", "facility", ("mail", "daemon", "user", "local0", "local7"), lambda c: c.log.facility),
    ("volume", "action", ("none", "hold", "tempfail", "lock"), lambda c: c.volume.action),
]


def config_with(where: str, key: str, spelling: str) -> str:
    item = f"{key}: {spelling}"
    if where == "top":
        return f"{item}\n{BASE}"
    if where == "defaults":
        return f"defaults:\n  {item}\n{BASE}"
    if where == "user":
        return BASE.replace("    domains: [example.com]\n", f"    domains: [example.com]\n    {item}\n")
    if where == "spam_policy":
        return f"defaults:\n  spam: {{{item}}}\n{BASE}"
    if where == "spf":
        return f"relay: {{egress_ips: [198.51.100.7]}}\nspf: {{{item}}}\n{BASE}"
    if where == "log":
        return f"log: {{{item}}}\n{BASE}"
    if where == "volume":
        return f"volume: {{{item}}}\n{BASE}"
    if where in ("spamassassin", "bulk"):
        return f"spam:\n  {where}: {{{item}}}\n{BASE}"
    raise AssertionError(where)


CASES = [(where, key, value, read) for where, key, values, read in ENUMS for value in values]


@pytest.mark.parametrize("where,key,value,read", CASES,
                         ids=[f"{w}.{k}={v}" for w, k, v, _ in CASES])
def test_documented_value_in_every_spelling(where, key, value, read):
    for spelling in (value, f"'{value}'", f'"{value}"'):
        config = parse_config(config_with(where, key, spelling), "t.yaml")
        assert read(config) == value, spelling


@pytest.mark.parametrize("where", ["top", "defaults", "user"])
@pytest.mark.parametrize("spelling", ["off", "Off", "OFF", "false", "False", "no", "No", "'off'"])
def test_header_from_off_and_its_boolean_spellings(where, spelling):
    config = parse_config(config_with(where, "header_from", spelling), "t.yaml")
    assert config.users[0].policy.header_from == "off"


@pytest.mark.parametrize("spelling", ["on", "yes", "true"])
def test_header_from_on_is_not_guessed(spelling):
    with pytest.raises(ConfigError) as exc:
        parse_config(config_with("top", "header_from", spelling), "t.yaml")
    assert str(exc.value) == f"t.yaml:1: header_from: '{spelling}' is not one of: enforce, warn, off"


def test_mode_off_names_the_word_written():
    with pytest.raises(ConfigError) as exc:
        parse_config(config_with("top", "mode", "off"), "t.yaml")
    assert str(exc.value) == "t.yaml:1: mode: 'off' is not one of: enforce, monitor"


@pytest.mark.parametrize("spelling", ["off", "no", "false", "null", "~"])
def test_lock_after_limit_hits_off(spelling):
    text = f"defaults:\n  lock: {{after_limit_hits: {spelling}, after_spam: {spelling}}}\n{BASE}"
    lock = parse_config(text, "t.yaml").defaults.lock
    assert lock.after_limit_hits is None and lock.after_spam is None


def _doc_text() -> str:
    """README.rst and every document under docs/ (the reference moved there)."""
    paths = [os.path.join(ROOT, "README.rst")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.rst")))
    assert len(paths) > 1, "docs/*.rst not found"
    parts = []
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            parts.append(fh.read())
    return "\n".join(parts)


@pytest.mark.parametrize("literal", sorted(set(re.findall(
    r"``((?:mode|header_from|on_store_error|on_error|oversize|on_spam|on_unsure|action): [a-z]+)``",
    _doc_text()))))
def test_readme_inline_enum_examples_parse(literal):
    """``header_from: off``-style examples in the README's prose."""
    key, value = literal.split(": ")
    where = next(w for w, k, values, _ in ENUMS if k == key and value in values)
    read = next(r for w, k, values, r in ENUMS if w == where and k == key)
    assert read(parse_config(config_with(where, key, value), "t.yaml")) == value
