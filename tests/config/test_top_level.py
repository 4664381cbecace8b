"""The top level is read like every other block (config.parse.TopLevel
through the same field reader): typed values with their bounds, unknown
and duplicate keys, every error collected."""

from __future__ import annotations

import dataclasses
import textwrap

import pytest

from outpost.config import ConfigError, parse_config
from outpost.config.parse import TOP_KEYS, TopLevel

BASE = textwrap.dedent("""\
    report_abuse_to: abuse@example.net
    domains: [example.com]
    users:
      - {name: web, type: ip, ips: [192.0.2.0/28], domains: [example.com]}
    """)


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "t.yaml")
    return exc.value.errors


def test_every_top_level_problem_is_listed_together():
    errors = errors_of("connection_limit: 0\nstore: memory\nstore: ftp://x\nworkers: 999\n"
                       "secret_file: ''\nmilter_timeout: 1s\nlisten: tcp:25\nmod: enforce\n" + BASE)
    assert errors == [
        "t.yaml:3: store: duplicate key",
        "t.yaml:8: mod: unknown key (did you mean 'mode'?)",
        "t.yaml:7: listen: 'tcp:25' is not a socket (unix:/path, inet:PORT@HOST, "
        "inet6:PORT@HOST, fd:N)",
        "t.yaml:5: secret_file: must not be empty",
        "t.yaml:1: connection_limit: 0 is below the minimum 1",
        "t.yaml:4: workers: 999 is above the maximum 256",
        "t.yaml:6: milter_timeout: expected an integer, got '1s'",
    ]


def test_values_and_defaults():
    c = parse_config("connection_limit: 3\nworkers: 2\nmode: monitor\nheader_from: no\n" + BASE)
    assert (c.connection_limit, c.workers, c.defaults.mode, c.defaults.header_from) == \
        (3, 2, "monitor", "off")
    d = parse_config(BASE)
    defaults = {f.name: f.default for f in dataclasses.fields(TopLevel)}
    assert (d.listen, d.store, d.secret_file, d.milter_timeout, d.max_headers) == (
        defaults["listen"], defaults["store"], defaults["secret_file"],
        defaults["milter_timeout"], defaults["max_headers"])


def test_the_key_list_is_the_schema():
    assert "store_options" in TOP_KEYS and "users_from" in TOP_KEYS
    assert TOP_KEYS == {f.name for f in dataclasses.fields(TopLevel)}
