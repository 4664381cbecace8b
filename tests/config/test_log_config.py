"""The ``log:`` block: parsed into a frozen LogSettings, ``log_level`` kept
as its older spelling, bad values refused with the file and line."""

from __future__ import annotations

import dataclasses

import pytest

from outpost.config import ConfigError, parse_config
from outpost.config.model import LogSettings

from .test_enum_spellings import BASE


def parse(head: str):
    return parse_config(head + BASE, "t.yaml")


def test_defaults():
    log = parse("").log
    assert log == LogSettings(target="stderr", facility="mail", format="text", level="info",
                              syslog_address="/dev/log")
    with pytest.raises(dataclasses.FrozenInstanceError):
        log.level = "debug"


def test_full_block():
    c = parse("log: {target: syslog, facility: local3, format: json, level: warning,\n"
              "      syslog_address: 'udp:127.0.0.1:514'}\n")
    assert (c.log.target, c.log.facility, c.log.format, c.log.level) == ("syslog", "local3", "json", "warning")
    assert c.log.syslog_udp == ("127.0.0.1", 514) and c.log.facility_code == 19
    assert c.log_level == "warning"                   # the old attribute reads the block
    assert parse("log: {syslog_address: /run/log.sock}\n").log.syslog_udp is None


def test_log_level_is_the_old_spelling_of_log_level():
    assert parse("log_level: debug\n").log.level == "debug"
    assert parse("log_level: error\nlog: {target: syslog}\n").log == LogSettings(target="syslog", level="error")
    with pytest.raises(ConfigError) as exc:
        parse("log_level: debug\nlog: {level: info}\n")
    assert str(exc.value) == "t.yaml:1: log_level: log_level is the old spelling of log.level: give only log.level"


@pytest.mark.parametrize("head,message", [
    ("log: {target: file}\n", "t.yaml:1: log.target: 'file' is not one of: stderr, syslog, journal"),
    ("log: {format: xml}\n", "t.yaml:1: log.format: 'xml' is not one of: text, json"),
    ("log: {facility: kern}\n", "t.yaml:1: log.facility: 'kern' is not one of: mail, daemon, user, "
                                "local0, local1, local2, local3, local4, local5, local6, local7"),
    ("log:\n  target: syslog\n  syslog_address: 'tcp:10.0.0.1:514'\n",
     "t.yaml:3: log.syslog_address: 'tcp:10.0.0.1:514' is neither a socket "
     "path (/dev/log) nor udp:HOST:PORT"),
    ("log: {syslog_address: 'udp:host:99999'}\n", None),
    ("log: {file: /var/log/outpost.log}\n", None),
    ("log: [stderr]\n", None),
])
def test_bad_values(head, message):
    with pytest.raises(ConfigError) as exc:
        parse(head)
    if message:
        assert str(exc.value) == message
    assert str(exc.value).startswith("t.yaml:")
