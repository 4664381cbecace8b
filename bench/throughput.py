"""Throughput of Postfix with and without milters, measured in one run.

    smtp-source (N sessions) -> throw-away Postfix (IP-relay listener of
    contrib/postfix) -> smtp-sink

Configurations (each its own Postfix instance, all idle but one at a time):

* ``postfix``  Postfix alone (no milter),
* ``noop``     Postfix + bench/noop_milter.py (pymilter answering CONTINUE
               to every stage) on a unix socket,
* any ``--milter NAME='COMMAND with {socket}'`` (``{socket}`` becomes
  ``unix:/path``; run from the repo root);
  e.g. ``--milter outpost='python -m outpost run -c CFG --socket {socket}'``
  (bench/outpost_throughput.sh does this with three Outpost configurations).

Rounds interleave the configurations and alternate their order so machine
noise hits all alike.  Reported: accepted messages per second (time for
smtp-source to get all messages accepted; the queue is drained, and every
message checked delivered, before the next run), median over rounds, with the
ratio to Postfix alone and to the noop milter (median of the ratios measured
in the same round, which cancels slow drifts of machine load), and the CPU
time the milter's processes used per message (from ``/proc``: what the
milter itself costs, apart from the MTA's share).

Milters listen on unix sockets: an ``inet:`` milter on loopback stalls ~40 ms
per message on delayed ACKs.  Run as root (Postfix instances).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tests.services.milter import MilterProcess
from tests.services.postfix import PostfixInstance, free_port, port_open

REPO = Path(__file__).resolve().parents[1]

_SENT_RE = re.compile(r" status=sent ")


class BenchError(RuntimeError):
    """A run did not complete (refused messages, lost messages, timeouts)."""


@dataclass
class Config:
    """One configuration under test."""

    name: str
    milter_argv: list[str] | None
    instance: PostfixInstance | None = None
    milter: MilterProcess | None = None
    rates: dict[int, list[float]] = field(default_factory=dict)
    cpu: dict[int, list[float]] = field(default_factory=dict)   # milter µs CPU per message


def parse_milter(spec: str) -> tuple[str, list[str]]:
    """``NAME=COMMAND`` -> (name, argv); the command must contain ``{socket}``."""
    name, sep, command = spec.partition("=")
    if not sep or not name or "{socket}" not in command:
        raise argparse.ArgumentTypeError(f"expected NAME='COMMAND with {{socket}}', got {spec!r}")
    return name.strip(), shlex.split(command)


def count_sent(instance: PostfixInstance) -> int:
    """Deliveries logged so far."""
    return len(_SENT_RE.findall(instance.maillog()))


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and its live
    descendants (a milter's master and workers), from ``/proc``."""
    parents: dict[int, int] = {}
    used: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:                      # gone meanwhile
            continue
        parents[int(entry)] = int(fields[1])
        used[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    tree, todo = set(), [pid]
    while todo:
        p = todo.pop()
        tree.add(p)
        todo += [c for c, parent in parents.items() if parent == p and c not in tree]
    return sum(used.get(p, 0.0) for p in tree)


def run_source(instance: PostfixInstance, args: argparse.Namespace, messages: int,
               size: int) -> float:
    """Send ``messages`` of ``size`` bytes; return accepted msgs/s after
    checking every message reached the sink."""
    before = count_sent(instance)
    cmd = ["smtp-source", "-s", str(args.sessions), "-m", str(messages), "-l", str(size),
           "-f", args.sender, "-t", args.recipient, "-M", "bench.example.org"]
    if args.reuse:
        cmd.append("-d")
    cmd.append(f"127.0.0.1:{instance.relay_port}")
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          timeout=max(120.0, messages / 5))
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise BenchError(f"smtp-source exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    instance.wait_queue_empty(timeout=max(120.0, messages / 5), include_hold=True)
    sent = count_sent(instance) - before
    if sent != messages:
        raise BenchError(f"{sent} of {messages} messages delivered to the sink")
    return messages / elapsed


def start_configs(configs: list[Config], sink_port: int, root: Path) -> None:
    """One Postfix per configuration, its milter on the instance's socket."""
    env = dict(os.environ)
    for cfg in configs:
        instance = PostfixInstance(root / cfg.name, sink_port=sink_port,
                                   milter="" if cfg.milter_argv is None else None)
        instance.build()
        if cfg.milter_argv is not None:
            cfg.milter = MilterProcess(cfg.milter_argv, instance.milter_socket, env=env,
                                       cwd=REPO, log_path=root / f"{cfg.name}.milter.log")
            cfg.milter.start(timeout=60)
        instance.start()
        cfg.instance = instance


def stop_configs(configs: list[Config]) -> None:
    for cfg in configs:
        if cfg.instance is not None:
            cfg.instance.stop()
        if cfg.milter is not None:
            cfg.milter.stop(graceful=False)


def same_round_ratios(cfg: Config, ref: Config, size: int) -> list[float]:
    """cfg/ref for each round (both measured in it)."""
    return [a / b for a, b in zip(cfg.rates[size], ref.rates[size])]


def paired_ratio(cfg: Config, ref: Config | None, size: int) -> str:
    """Median over rounds of cfg/ref measured in the same round."""
    if ref is None:
        return "-"
    return f"{statistics.median(same_round_ratios(cfg, ref, size)):.2f}"


def paired_quartiles(cfg: Config, ref: Config | None, size: int) -> str:
    """First and third quartile of the same-round ratios cfg/ref: how far
    apart the rounds were (half of them fall in between)."""
    if ref is None or len(cfg.rates[size]) < 2:
        return "-"
    q1, _, q3 = statistics.quantiles(same_round_ratios(cfg, ref, size), n=4, method="inclusive")
    return f"{q1:.2f}-{q3:.2f}"


def report(configs: list[Config], sizes: list[int], args: argparse.Namespace) -> None:
    """Print msgs/s (median, range) and ratios paired per round."""
    noop = next((c for c in configs if c.name == "noop"), None)
    print(f"\n{args.messages} messages x {args.sessions} sessions, {args.rounds} rounds "
          f"({'one session per message' if not args.reuse else 'sessions reused'}); "
          "msgs/s = median (min-max); ratios = median of same-round ratios; "
          "quartiles: of the same-round ratios to noop")
    w = max([12] + [len(c.name) + 2 for c in configs])
    header = (f"{'config':<{w}}{'size':>8}{'msgs/s':>10}{'range':>16}"
              f"{'vs postfix':>12}{'vs noop':>10}{'quartiles':>12}{'milter µs/msg':>15}")
    print(header)
    print("-" * len(header))
    for size in sizes:
        for cfg in configs:
            rates = cfg.rates[size]
            spread = f"{min(rates):.0f}-{max(rates):.0f}"
            print(f"{cfg.name:<{w}}{size:>8}{statistics.median(rates):>10.0f}{spread:>16}"
                  f"{paired_ratio(cfg, configs[0], size):>12}"
                  f"{paired_ratio(cfg, noop, size):>10}"
                  f"{paired_quartiles(cfg, noop, size):>12}"
                  f"{statistics.median(cfg.cpu[size]) if cfg.cpu.get(size) else 0:>15.0f}")
    print("milter µs/msg: CPU (user + system) of the milter's processes per message,\n"
          "median over rounds, read from /proc (0: no milter)")


@contextlib.contextmanager
def bench_site(keep: bool) -> Iterator[tuple[Path, int]]:
    """A work directory the postfix user can reach and a running
    ``smtp-sink`` on a free loopback port: ``(root, sink port)``; both are
    removed afterwards (the directory kept with ``keep``)."""
    root = Path(tempfile.mkdtemp(prefix="outpost-bench-"))
    root.chmod(0o755)  # the postfix user must reach the instances under it
    sink_port = free_port()
    sink = subprocess.Popen(["smtp-sink", "-u", "postfix", f"127.0.0.1:{sink_port}", "1024"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not port_open(sink_port):
            if sink.poll() is not None or time.monotonic() > deadline:
                raise BenchError("smtp-sink did not start")
            time.sleep(0.05)
        yield root, sink_port
    finally:
        sink.terminate()
        sink.wait(10)
        if keep:
            print(f"work directory kept: {root}")
        else:
            shutil.rmtree(root)


def run_rounds(configs, args: argparse.Namespace, sizes: list, send=None) -> None:
    """Interleaved rounds, the order reversed every other round so machine
    noise hits all configurations alike; fills each ``cfg.rates[size]``.
    A configuration needs ``name``, ``instance`` and ``rates``.  ``send``
    (default :func:`run_source`, smtp-source) is called like it; a size
    may then be any workload name it knows."""
    send = send if send is not None else run_source
    width = max(len(cfg.name) for cfg in configs)
    for rnd in range(args.rounds):
        order = configs if rnd % 2 == 0 else configs[::-1]
        for size in sizes:
            for cfg in order:
                milter = getattr(cfg, "milter", None)
                pid = milter.proc.pid if milter is not None and milter.proc is not None else None
                before = tree_cpu(pid) if pid else 0.0
                rate = send(cfg.instance, args, args.messages, size)
                cfg.rates.setdefault(size, []).append(rate)
                cpu = ""
                if pid and hasattr(cfg, "cpu"):
                    per_msg = (tree_cpu(pid) - before) / args.messages * 1e6
                    cfg.cpu.setdefault(size, []).append(per_msg)
                    cpu = f"  milter CPU {per_msg:5.0f} µs/msg"
                label = f"{size:>6} B" if isinstance(size, int) else f"{size:>8}"
                print(f"round {rnd + 1} {cfg.name:<{width}} {label} {rate:8.0f} msgs/s{cpu}",
                      flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages per run")
    parser.add_argument("--sessions", type=int, default=10, help="parallel SMTP sessions")
    parser.add_argument("--sizes", default="2048,20480", help="payload sizes in bytes")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up messages per config")
    parser.add_argument("--milter", action="append", type=parse_milter, default=[],
                        metavar="NAME='CMD {socket}'", help="extra milter configuration")
    parser.add_argument("--no-noop", action="store_true", help="skip the noop milter")
    parser.add_argument("--sender", default="bench@example.com")
    parser.add_argument("--recipient", default="rcpt@example.net")
    parser.add_argument("--reuse", action="store_true",
                        help="send several messages per session (smtp-source -d)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    configs = [Config("postfix", None)]
    if not args.no_noop:
        configs.append(Config("noop", [sys.executable, str(REPO / "bench" / "noop_milter.py"),
                                       "{socket}"]))
    configs += [Config(name, argv_) for name, argv_ in args.milter]
    if len({c.name for c in configs}) != len(configs):
        parser.error("configuration names must be unique")

    with bench_site(args.keep) as (root, sink_port):
        try:
            start_configs(configs, sink_port, root)
            for cfg in configs:
                run_source(cfg.instance, args, args.warmup, sizes[0])
            run_rounds(configs, args, sizes)
            report(configs, sizes, args)
        finally:
            stop_configs(configs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
