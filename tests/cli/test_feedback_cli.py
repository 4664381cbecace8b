"""``outpost feedback`` as an MTA pipe runs it: exit 0 when the complaint was
counted or kept (an unreadable one too: it is never bounced back to the
receiver), 75 (EX_TEMPFAIL) when the store, the configuration or the secret
cannot be used, so the MTA retries; no traceback on hostile input.  And
``--maildir`` for a batch, ``feedback list`` for what was kept."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from outpost import cli
from outpost.core.idtoken import Origin, TokenCodec

SECRET = b"0123456789abcdef0123456789abcdef"
ARF = Path(__file__).resolve().parents[1] / "core" / "arf"


@dataclass
class Ran:
    returncode: int
    stdout: bytes
    stderr: bytes


@pytest.fixture
def outpost(monkeypatch, capsysbinary):
    """``outpost feedback ARGS -c CFG`` in this process (standard input
    given; the command's logging setup left out: pytest owns the root logger)."""
    monkeypatch.setattr(cli, "_setup_logging", lambda *a, **k: None)

    def run(cfg: Path, *args: str, stdin: bytes = b"") -> Ran:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        code = cli.main(["feedback", *args, "-c", str(cfg)])
        out = capsysbinary.readouterr()
        return Ran(code, out.out, out.err)
    return run


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def write(tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET + b"\n")
    secret.chmod(0o600)

    def write(store: str = f"sqlite://{tmp_path}/state.db", extra: str = "") -> Path:
        cfg = tmp_path / "outpost.yaml"
        cfg.write_text(textwrap.dedent(f"""\
            secret_file: {secret}
            store: {store}
            report_abuse_to: abuse@example.net
            domains: [example.com]
            defaults: {{lock: {{after_complaints: 2}}}}
            users:
              - {{name: webfarm, type: ip, ips: [192.0.2.0/24], domains: [example.com]}}
            feedback: {{spool_dir: {tmp_path}/fb, max_size: 100000}}
            """) + extra)
        return cfg
    return write


def complaint(identity: str = "alice@example.com", queue_id: str = "Q1") -> bytes:
    token = TokenCodec(SECRET).seal(Origin("webfarm", identity, "192.0.2.1", queue_id, 1))
    return (ARF / "rfc5965_full.eml").read_bytes().replace(b"{TOKEN}", token.encode())


def test_counted_then_locked_and_listed(write, outpost, capsysbinary):
    cfg = write()
    first = outpost(cfg, stdin=complaint(queue_id="Q1"))
    assert first.returncode == 0, first.stderr
    assert b"counted complaint against webfarm/alice@example.com" in first.stdout
    second = outpost(cfg, stdin=complaint(queue_id="Q2"))
    assert second.returncode == 0 and b"locked webfarm/alice@example.com" in second.stdout
    listed = json.loads(outpost(cfg, "list", "--json").stdout)
    assert [i["identity_complaints"] for i in listed["counted"]] == [1, 2]
    assert cli.main(["locks", "--json", "-c", str(cfg)]) == 0
    [lock] = json.loads(capsysbinary.readouterr().out)["locks"]
    assert (lock["key"], lock["by"]) == ("webfarm/alice@example.com", "complaints")


@pytest.mark.parametrize("raw", [
    b"",
    b"\x00\xff\xfe garbage \x80" * 50,
    b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" * 2000,          # deep nesting
    b"Subject: big\r\n\r\n" + b"x" * 300_000,                              # over max_size
])
def test_hostile_input_is_kept_not_bounced(write, outpost, raw):
    cfg = write()
    out = outpost(cfg, stdin=raw)
    assert out.returncode == 0, out.stderr
    assert b"kept unattributed complaint" in out.stdout
    assert b"Traceback" not in out.stderr + out.stdout
    [kept] = json.loads(outpost(cfg, "list", "--json").stdout)["unattributed"]
    assert kept["size"] <= 100_000


def test_store_down_is_a_tempfail(write, outpost):
    cfg = write(store=f"redis://127.0.0.1:{closed_port()}/0")
    out = outpost(cfg, stdin=complaint())
    assert out.returncode == 75, (out.stdout, out.stderr)
    assert b"the MTA retries" in out.stderr and b"Traceback" not in out.stderr
    assert json.loads(outpost(cfg, "list", "--json").stdout)["counted"] == []   # counted on the retry


def test_bad_configuration_and_secret_are_tempfails(write, outpost, tmp_path):
    cfg = write()
    cfg.write_text(cfg.read_text() + "feedback_typo: 1\n")
    assert outpost(cfg, stdin=complaint()).returncode == 75
    cfg = write()
    (tmp_path / "secret").chmod(0o644)
    out = outpost(cfg, stdin=complaint())
    assert out.returncode == 75 and b"secret" in out.stderr


def test_maildir_batch(write, outpost, tmp_path):
    cfg = write()
    for sub in ("new", "cur", "tmp"):
        (tmp_path / "md" / sub).mkdir(parents=True)
    (tmp_path / "md" / "new" / "1.host").write_bytes(complaint(queue_id="A"))
    (tmp_path / "md" / "cur" / "2.host:2,S").write_bytes(complaint(identity="bob@example.com"))
    (tmp_path / "md" / "new" / "3.host").write_bytes(b"Subject: no token\r\n\r\nhello\r\n")
    out = outpost(cfg, "--maildir", str(tmp_path / "md"))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.decode().splitlines()
    assert len(lines) == 3
    listed = json.loads(outpost(cfg, "list", "--json").stdout)
    assert sorted(i["identity"] for i in listed["counted"]) == ["alice@example.com", "bob@example.com"]
    assert len(listed["unattributed"]) == 1


def test_a_real_pipe_process_answers_hostile_input_without_a_traceback(write):
    raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n" * 3000
    out = subprocess.run([sys.executable, "-m", "outpost", "feedback", "-c", str(write())],
                         input=raw, capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert b"kept unattributed complaint" in out.stdout and b"Traceback" not in out.stderr
