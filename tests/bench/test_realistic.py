"""bench/realistic.py without Postfix: the SMTP payload and the summary."""

from __future__ import annotations

import argparse

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bench.dkim_throughput import Setup
from bench.realistic import CORPUS, REPO, dot_stuff, outpost_full, parse_without, report
from outpost.config.parse import load_config


def test_dot_stuff_doubles_leading_dots_and_ends_the_data():
    assert dot_stuff(b".a\n..b\nc") == b"..a\r\n...b\r\nc\r\n.\r\n"
    assert dot_stuff(b"x\r\n.\r\n") == b"x\r\n..\r\n.\r\n"


def _setup(name: str, rates: list[float], cpu: list[float]) -> Setup:
    s = Setup(name, None if name == "postfix" else ["x"], signs=name != "postfix")
    s.rates = {CORPUS: rates}
    s.cpu = {CORPUS: cpu} if cpu else {}
    return s


def test_report_pairs_rounds_and_compares_cpu_with_opendkim(capsys):
    setups = [_setup("postfix", [100, 200], []), _setup("noop", [50, 100], [800, 800]),
              _setup("opendkim", [40, 80], [2000, 2200]), _setup("outpost", [44, 80], [1800, 2200])]
    args = argparse.Namespace(messages=10, sessions=2, rounds=2, bits=2048)
    report(setups, [CORPUS], args, None)
    row = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("outpost "))
    # msgs/s median 62, vs postfix 0.42, vs noop 0.84, vs opendkim median(1.1, 1.0) = 1.05,
    # CPU median 2000, CPU / OpenDKIM's median(0.9, 1.0) = 0.95
    assert row.split() == ["outpost", "corpus", "62", "44-80", "0.42", "0.84", "1.05",
                           "1.02-1.08", "2000", "0.95"]


@pytest.mark.parametrize("without", ["", "spam", "dkim", "spam+dkim"])
def test_without_leaves_out_the_parts_it_names_and_nothing_else(tmp_path, without):
    key = tmp_path / "bench.key"
    key.write_bytes(rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    parts = parse_without(without) if without else frozenset()
    setup = outpost_full("outpost", tmp_path, key, REPO, "python3", 0, parts)
    config = load_config(str(tmp_path / "outpost.outpost" / "outpost.yml"))
    assert config.spam.enabled is ("spam" not in parts)
    assert bool(config.domains[0].dkim) is ("dkim" not in parts)
    assert setup.signs is ("dkim" not in parts)
    # the rest as with everything on: limits in SQLite, one mapped user
    assert config.store.startswith("sqlite:///")
    assert config.defaults.limits and [u.name for u in config.users] == ["bench"]


@pytest.mark.parametrize("value", ["", "bayes", "spam+", "spam,dkim"])
def test_without_refuses_what_it_cannot_leave_out(value):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_without(value)
