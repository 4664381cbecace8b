"""Start Outpost itself (``python -m outpost run``) for end-to-end tests."""

from __future__ import annotations

import os
import sys
import tempfile
import textwrap
from pathlib import Path

from outpost.core.idtoken import new_secret
from tests.services.milter import MilterProcess

ROOT = Path(__file__).resolve().parents[2]

E2E_CONFIG = textwrap.dedent("""\
    hostname: relay.example.net
    report_abuse_to: abuse@example.net
    connection_limit: 10
    domains: [example.com, example.org]
    defaults:
      limits:
        max_recipients: 50
    users:
      - name: webfarm
        type: ip
        ips: [203.0.113.0/28, "2001:db8:77::/64"]
        domains: [example.com]
        identity_headers:
          - {header: X-AuthUser}
          - {header: X-PHP-Originating-Script, regex: '^(\\d+):', remove: true}
      - name: loopback-app
        type: ip
        ips: [127.0.0.77/32]
        domains: [example.com]
      - name: localhost
        type: ip
        ips: [127.0.0.0/8]
        domains: [example.com]
        connection_limit: 200
      - name: example.org
        type: domain
      - name: alice
        type: login
        logins: [alice@example.com]
        domains: [example.com]
    """)


class Outpost:
    """An Outpost master with workers on a Postfix instance's milter socket."""

    def __init__(self, socket_path: Path, config_text: str = E2E_CONFIG, *, workers: int = 2,
                 store: str | None = None, extra_env: dict | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="outpost-e2e-"))
        self.secret_file = self.dir / "secret"
        self.secret_file.write_bytes(new_secret())
        self.secret_file.chmod(0o600)
        self.store = store or f"sqlite:///{self.dir}/state.db"
        self.config_path = self.dir / "outpost.yaml"
        self.write_config(config_text)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "milter"), env.get("PYTHONPATH", "")])
        env.update(extra_env or {})
        self.proc = MilterProcess(
            [sys.executable, "-m", "outpost", "run", "-c", str(self.config_path),
             "--socket", "{socket}", "--workers", str(workers)],
            socket_path, env=env, log_path=self.dir / "outpost.log")

    def write_config(self, text: str) -> None:
        head = f"secret_file: {self.secret_file}\nstore: {self.store}\n"
        self.config_path.write_text(head + text)

    def start(self) -> "Outpost":
        self.proc.start()
        return self

    def stop(self, graceful: bool = True) -> int | None:
        return self.proc.stop(graceful=graceful, timeout=40)

    def log(self) -> str:
        return self.proc.log()
