"""Peak memory of an Outpost worker for one big message, through real Postfix.

    client --SMTP--> Postfix --milter--> Outpost (1 worker, DKIM signing and
    the spam engine on) --> sink

For each case the worker's peak resident size (``VmHWM`` in
``/proc/<pid>/status``, reset to the current size through
``/proc/<pid>/clear_refs`` first) is read before and after the message; the
growth is what that message cost at its peak.  A small signed message goes through
first, so the imports, the spam model and the key are already counted in
"before".  Cases:

* ``50 MB signed``: a 50 MB plain-text body from a user whose mail is signed
  (relaxed/relaxed) and scanned; goal: growth <= 32 MB (issue #14 item 9);
* ``50 MB attachment``: the same size as a short text and a base64
  attachment (the rest of the body is watched for text parts); same goal;
* ``400 000 tiny headers``: ``X-Hn: v`` fields (Outpost keeps at most
  ``max_headers`` and refuses the message with 552 5.3.4).

``--milter-root DIR`` runs the Outpost of another checkout (its ``milter/``)
for a before/after comparison.  Run as root (Postfix instance).

    .venv/bin/python -m bench.memory [--body-mb 50] [--headers 400000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from outpost.effects.dkim import keygen
from tests.e2e.outpost_proc import Outpost
from tests.services.postfix import PostfixInstance
from tests.services.sink import SmtpSink
from tests.services.smtp import send

CONFIG = textwrap.dedent("""\
    hostname: relay.example.net
    report_abuse_to: abuse@example.net
    reports: {{enabled: false}}
    domains:
      - name: example.com
        dkim: [{{selector: s1, key: {key}}}]
    users:
      - name: alice
        type: ip
        ips: [203.0.113.0/24]
        domains: [example.com]
    """)


def status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


def worker(op: Outpost) -> int:
    """The one worker (reports are off: the master's only child)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        kids = op.children()
        if len(kids) == 1:
            return kids[0]
        time.sleep(0.1)
    raise RuntimeError(f"expected one worker, found {op.children()}")


def head(extra: bytes = b"") -> bytes:
    return (b"From: alice@example.com\r\nTo: x@dest.example\r\nSubject: memory\r\n"
            b"Date: Fri, 27 Nov 2026 10:00:00 +0000\r\nMessage-ID: <m@example.com>\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n" + extra + b"\r\n")


def measure(pf, op, sink, message: bytes) -> tuple[int, int, str]:
    """(VmHWM before, after in kB, SMTP answer) for one message."""
    pid = worker(op)
    try:                      # reset the peak to the current size (Linux >= 4.0)
        with open(f"/proc/{pid}/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass                  # then "before" is the peak so far
    before = status_kb(pid, "VmHWM")
    r = send(pf.relay_port, xclient={"ADDR": "203.0.113.9"}, mail_from="alice@example.com",
             rcpt_tos=["x@dest.example"], message=message, timeout=600)
    if pid != worker(op):
        raise RuntimeError("the worker was replaced during the message")
    after = status_kb(pid, "VmHWM")
    if r.accepted:
        sink.wait_for(1, timeout=300)
        sink.clear()
    return before, after, f"{r.code} {r.text[:60]}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--body-mb", type=int, default=50)
    ap.add_argument("--headers", type=int, default=400_000)
    ap.add_argument("--goal-mb", type=float, default=32.0)
    ap.add_argument("--milter-root", help="checkout whose milter/ to run (default: this one)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="outpost-membench-"))
    key, _ = keygen("example.com", "s1", "rsa", 2048, str(tmp))
    sink = SmtpSink().start()
    pf = PostfixInstance(sink_port=sink.port, main_overrides={
        "message_size_limit": str((args.body_mb + 20) << 20), "header_size_limit": "2000000",
        "smtpd_timeout": "600s", "local_header_rewrite_clients": ""})
    env = {"PYTHONPATH": str(Path(args.milter_root).resolve() / "milter")} if args.milter_root else None
    pf.start()
    op = Outpost(pf.milter_socket, CONFIG.format(key=key), workers=1, extra_env=env).start()
    failed = False
    try:
        measure(pf, op, sink, head() + b"Warm-up: a small signed message.\r\n")
        line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
        body = line * ((args.body_mb << 20) // len(line))
        blob = (b"JVBERi0xLjQKJcfsj6IKNSAwIG9iago8PC9MZW5ndGggNiAwIFI+PgpzdHJlYW0KeJwr\r\n"
                * ((args.body_mb << 20) // 70))
        mixed = (head().replace(b"Content-Type: text/plain; charset=us-ascii",
                                b"Content-Type: multipart/mixed; boundary=\"b1\"")
                 + b"--b1\r\nContent-Type: text/plain\r\n\r\nThe file you asked for.\r\n"
                 + b"--b1\r\nContent-Type: application/pdf; name=\"big.pdf\"\r\n"
                 + b"Content-Transfer-Encoding: base64\r\n\r\n" + blob + b"--b1--\r\n")
        del blob
        cases = [
            (f"{args.body_mb} MB signed", head() + body),
            (f"{args.body_mb} MB attachment", mixed),
            (f"{args.headers} tiny headers", head(b"".join(b"X-H%d: v\r\n" % i for i in range(args.headers)))
             + b"Hello.\r\n"),
        ]
        del body
        print(f"{'case':<24} {'VmHWM before':>13} {'after':>10} {'growth':>10}  answer")
        for name, message in cases:
            before, after, answer = measure(pf, op, sink, message)
            growth = (after - before) / 1024
            print(f"{name:<24} {before / 1024:>10.1f} MB {after / 1024:>7.1f} MB {growth:>7.1f} MB  {answer}")
            if "MB" in name and growth > args.goal_mb:
                print(f"  over the goal of {args.goal_mb:.0f} MB")
                failed = True
    finally:
        op.stop(graceful=False)
        pf.cleanup()
        sink.stop()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
