"""Outpost refuses to start, with a message naming the culprit, when a DKIM
key is unsafe or missing, or the secret is missing (``outpost run`` exits 1
before opening its socket)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from outpost.effects.dkim import keygen

ROOT = Path(__file__).resolve().parents[2]


def run_outpost(cfg: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "milter"))
    return subprocess.run([sys.executable, "-m", "outpost", "run", "-c", str(cfg), "--workers", "1",
                           "--socket", f"unix:{cfg.parent}/o.sock"], capture_output=True, text=True,
                          env=env, timeout=60)


@pytest.fixture
def setup(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("0123456789abcdef0123456789abcdef\n")
    secret.chmod(0o600)
    key, _ = keygen("example.com", "s1", "rsa", 2048, str(tmp_path))

    def write(key_path: str, secret_path: Path = secret, store: str = f"sqlite:///{tmp_path}/state.db") -> Path:
        cfg = tmp_path / "outpost.yaml"
        cfg.write_text(textwrap.dedent(f"""\
            secret_file: {secret_path}
            store: {store}
            report_abuse_to: abuse@example.net
            reports: {{spool_dir: {tmp_path}/reports, listener_auth: none}}
            domains:
              - {{name: example.com, dkim: {{selector: s1, key: {key_path}}}}}
            users:
              - {{name: alice, type: login, logins: [alice@example.com], domains: [example.com]}}
            """))
        return cfg
    return tmp_path, key, write


def test_key_readable_by_others_refused(setup):
    tmp, key, write = setup
    os.chmod(key, 0o644)
    out = run_outpost(write(key))
    assert out.returncode == 1
    assert "cannot start" in out.stderr and key in out.stderr
    assert not (tmp / "o.sock").exists()


def test_missing_key_and_missing_secret_refused(setup):
    tmp, key, write = setup
    out = run_outpost(write(str(tmp / "nope.pem")))
    assert out.returncode == 1 and "nope.pem" in out.stderr
    out = run_outpost(write(key, tmp / "no-secret"))
    assert out.returncode == 1 and "no-secret" in out.stderr and "outpost secret" in out.stderr


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_secret_readable_by_group_or_others_refused(setup, mode):
    """As DKIM keys: refused at start (exit 1, before the socket) and by
    check-config (exit 2), naming the file and the fix."""
    tmp, key, write = setup
    secret = tmp / "secret"
    secret.chmod(mode)
    cfg = write(key)
    out = run_outpost(cfg)
    assert out.returncode == 1, out.stderr
    assert "cannot start" in out.stderr
    assert f"secret_file {secret}: mode {mode:04o} gives access to group/others; chmod 600" in out.stderr
    assert not (tmp / "o.sock").exists()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "milter"))
    check = subprocess.run([sys.executable, "-m", "outpost", "check-config", "-c", str(cfg)],
                           capture_output=True, text=True, env=env, timeout=60)
    assert check.returncode == 2 and check.stdout == "", check
    assert f"mode {mode:04o} gives access to group/others; chmod 600 {secret}" in check.stderr
    secret.chmod(0o600)
    check = subprocess.run([sys.executable, "-m", "outpost", "check-config", "-c", str(cfg)],
                           capture_output=True, text=True, env=env, timeout=60)
    assert check.returncode == 0 and ": OK (" in check.stdout, check


def test_check_config_refuses_an_unsafe_dkim_key(setup):
    tmp, key, write = setup
    cfg = write(key)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "milter"))
    check = [sys.executable, "-m", "outpost", "check-config", "-c", str(cfg)]
    assert subprocess.run(check, capture_output=True, text=True, env=env, timeout=60).returncode == 0
    os.chmod(key, 0o640)
    out = subprocess.run(check, capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2 and key in out.stderr and "chmod 600" in out.stderr, out


def test_store_refused_at_start_without_its_password(setup):
    """A Redis URL that redis-py refuses when the store is opened: the
    startup error names the store with its password replaced by ``***``."""
    tmp, key, write = setup
    out = run_outpost(write(key, store="redis://:hunter2@127.0.0.1:1/0?socket_timeout=abc"))
    assert out.returncode == 1, out.stderr
    assert "cannot start" in out.stderr and "store redis://:***@127.0.0.1:1/0" in out.stderr, out.stderr
    assert "hunter2" not in out.stderr
    assert not (tmp / "o.sock").exists()
