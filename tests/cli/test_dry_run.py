"""``outpost run --dry-run``: everything ``run`` builds before it serves is
built (secret, DKIM keys, store, report spool), then it exits; 0 when run
would start, 1 with run's ``cannot start:`` line, 2 for a configuration
error, 3 when the store cannot be opened.  No socket is bound."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from outpost.effects.dkim import keygen


def dry_run(cfg: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "outpost", "run", "--dry-run", "-c", str(cfg)],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def write(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("0123456789abcdef0123456789abcdef\n")
    secret.chmod(0o600)
    key, _ = keygen("example.com", "s1", "rsa", 1024, str(tmp_path))

    def write(key_path: str = key, store: str = f"sqlite://{tmp_path}/db/state.db") -> Path:
        cfg = tmp_path / "outpost.yaml"
        cfg.write_text(textwrap.dedent(f"""\
            listen: unix:{tmp_path}/o.sock
            secret_file: {secret}
            store: {store}
            report_abuse_to: abuse@example.net
            reports: {{spool_dir: {tmp_path}/reports, listener_auth: none}}
            domains:
              - {{name: example.com, dkim: {{selector: s1, key: {key_path}}}}}
            users:
              - {{name: alice, type: login, logins: [alice@example.com], domains: [example.com]}}
            """))
        return cfg
    return write


def test_a_startable_configuration(write, tmp_path):
    out = dry_run(write())
    assert out.returncode == 0, out.stderr
    assert "dry run OK" in out.stdout and "1 users" in out.stdout
    assert (tmp_path / "db" / "state.db").exists()         # the store was opened, as run does
    assert (tmp_path / "reports").is_dir()                  # and the spool
    assert not (tmp_path / "o.sock").exists()               # nothing served


def test_a_key_run_refuses(write, tmp_path):
    out = dry_run(write(key_path=str(tmp_path / "missing.pem")))
    assert out.returncode == 1
    assert "cannot start" in out.stderr and "missing.pem" in out.stderr


def test_a_store_run_cannot_open(write, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = dry_run(write(store=f"sqlite://{blocker}/sub/state.db"))
    assert out.returncode == 3                  # as run: a store error
    assert "store error" in out.stderr and f"{blocker}/sub" in out.stderr


def test_a_configuration_error(write, tmp_path):
    out = dry_run(write(store="unix:///run/redis.sock"))
    assert out.returncode == 2
    assert "is not a store URL" in out.stderr
