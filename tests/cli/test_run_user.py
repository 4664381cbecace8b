"""``outpost run --user/--group``: refusals with a clear message, before
any socket is opened or any root-only file read by a worker."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from outpost.core.idtoken import new_secret
from tests.services.serviceuser import service_python

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def config(tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(new_secret())
    secret.chmod(0o600)
    cfg = tmp_path / "outpost.yaml"
    cfg.write_text(textwrap.dedent(f"""\
        secret_file: {secret}
        store: sqlite:///{tmp_path}/private/state.db
        report_abuse_to: abuse@example.net
        reports: {{enabled: false}}
        domains: [example.com]
        users:
          - {{name: alice, type: ip, ips: [192.0.2.0/24], domains: [example.com]}}
        """))
    return cfg


def run(cfg: Path, *args: str) -> subprocess.CompletedProcess:
    python, path = service_python() or (sys.executable, [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "milter"), *path]))
    return subprocess.run([python, "-m", "outpost", "run", "-c", str(cfg), "--workers", "1",
                           "--socket", f"unix:{cfg.parent}/o.sock", *args],
                          capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.parametrize("args,message", [
    (("--user", "no-such-user-here"), "user 'no-such-user-here' does not exist (create it: useradd"),
    (("--user", "root"), "that is root; name an unprivileged user"),
    (("--group", "nogroup"), "--group needs --user"),
    (("--user", "nobody", "--group", "no-such-group-here"), "group 'no-such-group-here' does not exist"),
])
def test_refused(config, args, message):
    out = run(config, *args)
    assert out.returncode == 1, out.stderr
    assert "cannot start" in out.stderr and message in out.stderr, out.stderr
    assert not (config.parent / "o.sock").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_store_the_user_cannot_write_is_refused_after_the_drop(config):
    """The store is opened as the service user: a directory only root may
    enter (here pytest's tmp_path, 0700) stops the start with its name."""
    out = run(config, "--user", "nobody", "--group", "nogroup")
    assert "running as nobody:nogroup" in out.stderr
    assert out.returncode == 3, out.stderr
    assert ("store error" in out.stderr and f"{config.parent}/private/state.db" in out.stderr
            and "Permission denied" in out.stderr), out.stderr
