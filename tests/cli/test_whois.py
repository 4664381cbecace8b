"""``outpost whois`` run as the abuse desk runs it: a good token names the
sender, an altered one exits 1 with a clear message and reveals nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from outpost.cli import main
from outpost.core.idtoken import Origin, TokenCodec, read_secret
from tests.core.test_idtoken import flipped, raw_of

ROOT = Path(__file__).resolve().parents[2]
ORIGIN = Origin(user="alice", identity="alice@example.com", client_ip="192.0.2.5",
                queue_id="4XyZ1", time=1_700_000_000)


@pytest.fixture
def setup(tmp_path):
    secret = tmp_path / "secret"
    assert main(["secret", str(secret)]) == 0
    cfg = tmp_path / "outpost.yaml"
    cfg.write_text(textwrap.dedent(f"""\
        secret_file: {secret}
        store: sqlite:///{tmp_path}/state.db
        report_abuse_to: abuse@example.net
        domains: [example.com]
        users:
          - {{name: alice, type: login, logins: [alice@example.com], domains: [example.com]}}
        """))
    return cfg, TokenCodec(read_secret(str(secret))).seal(ORIGIN)


def whois(cfg: Path, token: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "milter"))
    return subprocess.run([sys.executable, "-m", "outpost", "whois", "-c", str(cfg), token],
                          capture_output=True, text=True, env=env, timeout=60)


def test_whois_names_the_sender(setup):
    cfg, token = setup
    out = whois(cfg, token)
    assert out.returncode == 0, out.stderr
    assert "identity:  alice@example.com" in out.stdout and "queue id:  4XyZ1" in out.stdout


@pytest.mark.parametrize("where", ["version", "nonce", "ciphertext", "tag"])
def test_whois_refuses_an_altered_token(setup, where):
    cfg, token = setup
    n = len(raw_of(token))
    index = {"version": 0, "nonce": 5, "ciphertext": 20, "tag": n - 1}[where]
    out = whois(cfg, flipped(token, index))
    assert out.returncode == 1
    assert out.stdout == ""                                  # nothing about any sender
    assert out.stderr.startswith("outpost: ") and "Traceback" not in out.stderr
    expected = ("not an Outpost token (bad length or version)" if where == "version"
                else "token was not made with this secret, or was altered")
    assert expected in out.stderr, out.stderr
