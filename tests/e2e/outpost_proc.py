"""Start Outpost itself (``python -m outpost run``) for end-to-end tests."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from outpost.core.idtoken import new_secret
from tests.services.milter import MilterProcess, MilterStartError

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
    """An Outpost master with workers on a Postfix instance's milter socket.
    ``faults``: run it through :mod:`tests.e2e.faulty_outpost`, whose policy
    fails on messages with an ``X-Test-Fault`` header (the error path)."""

    def __init__(self, socket_path: Path, config_text: str = E2E_CONFIG, *, workers: int = 2,
                 store: str | None = None, extra_env: dict | None = None,
                 faults: bool = False) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="outpost-e2e-"))
        self.secret_file = self.dir / "secret"
        self.secret_file.write_bytes(new_secret())
        self.secret_file.chmod(0o600)
        self.store = store or f"sqlite:///{self.dir}/state.db"
        self.config_path = self.dir / "outpost.yaml"
        self.write_config(config_text)
        env = dict(os.environ)
        # With faults the entry module is under tests/: the repository root on the path too.
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "milter")] + [str(ROOT)] * faults
                                            + [env.get("PYTHONPATH", "")])
        env.update(extra_env or {})
        module = "tests.e2e.faulty_outpost" if faults else "outpost"
        self.proc = MilterProcess(
            [sys.executable, "-m", module, "run", "-c", str(self.config_path),
             "--socket", "{socket}", "--workers", str(workers)],
            socket_path, env=env, log_path=self.dir / "outpost.log")

    def write_config(self, text: str) -> None:
        head = f"secret_file: {self.secret_file}\nstore: {self.store}\n"
        if "\nreports:" not in "\n" + text:          # keep test reports out of /var/spool
            head += (f"reports: {{spool_dir: {self.dir}/reports, smtp: {{port: 9}}, "
                     f"listener_auth: none}}\n")
        self.config_path.write_text(head + text)

    def start(self) -> "Outpost":
        """Start, and return once the master says every worker serves (its
        children, the report sender included, are all forked by then)."""
        self.proc.start()
        text = self.config_path.read_text()
        if "target: syslog" in text or "target: journal" in text:
            return self                         # its lines go elsewhere
        deadline = time.monotonic() + 60
        while " workers serving on " not in self.log():
            if time.monotonic() > deadline or not self.proc.running:
                self.proc.stop()                # no caller holds it yet: never leave it running
                raise MilterStartError(f"no 'workers serving' line:\n{self.log()[-3000:]}")
            time.sleep(0.05)
        return self

    def children(self) -> list[int]:
        """Pids of the master's children (workers, report sender)."""
        if self.proc.proc is None:
            return []
        master, out = self.proc.proc.pid, []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as fh:
                        ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                if ppid == master:
                    out.append(int(entry))
        return out

    def stop(self, graceful: bool = True) -> int | None:
        """Stop Outpost.  Not graceful: SIGKILL the children, then the
        master, and wait until all are gone, so that the next Outpost on the
        same socket never meets a dying one."""
        if graceful:
            return self.proc.stop(graceful=True, timeout=40)
        pids = self.children()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        code = self.proc.stop(graceful=False)
        deadline = time.monotonic() + 10
        while any(os.path.exists(f"/proc/{p}") for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        return code

    def log(self) -> str:
        return self.proc.log()
