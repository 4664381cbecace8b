"""Rate-limit check+count (or connection-slot) throughput of the store backends.

Usage: ``python -m bench.limiter [--seconds 2] [--redis-url URL] [--op hit|slot|volume]
[--procs N] [--no-sentinel]``

With ``--op hit`` (the default) each operation is one ``Store.hit()`` over
two buckets (a per-minute and a per-hour limit of one of 200 users; limits
high enough that everything is admitted, so every call writes).  With
``--op slot`` it is what every SMTP connection costs: ``conn_acquire()``
then ``conn_release()`` of a slot for one of 200 client IPs.  With ``--op
message`` it is the store's part of one message with everything on: at
RCPT ``hit(dry_run=True)`` over the four buckets of the limits of
``bench/outpost_configs.sh``, at the end the bulk check's
``fingerprint_add_message()`` of six new fingerprints (mail that differs),
then ``hit()`` over the four buckets;
``message-pairs`` is the same with the bulk check's former call, twelve
``fingerprint_add_many()`` items (each fingerprint also under a key of its
sender), which runs on earlier versions too (``PYTHONPATH=OTHER/milter``);
``message-busy`` is ``message`` from four identities with windows of 3 s
(subwindows of 50 ms) after one window of warm-up, so that every bucket
holds its 61 subwindows, as a busy identity's do in a worker that has run
for a day.  Runs memory, sqlite (temp file) and Redis
(a throw-away ``redis-server`` on loopback unless ``--redis-url``), then
Redis behind Sentinel: a throw-away master + replica + 3 Sentinels, once
through ``redis+sentinel://`` and once straight to the same master
(``redis-direct``, the fair comparison: both pay the replication), first in
one process, then in ``--procs`` (2) processes at once, and prints
operations per second with the ratio to the memory backend measured in the
same run.  Then ``--rounds`` (5) rounds of Sentinel against the same master
direct, back to back in alternating order, and the median and quartiles of
the ratio Sentinel / direct (one process and ``--procs``): on a busy
machine single runs scatter more than the two differ.

With ``--op volume`` it measures what volume anomalies (``volume:``) add to
a message's store work: per backend (memory, sqlite, Redis), ``--rounds``
rounds alternating the message's ``hit()`` alone and the same ``hit()``
followed by ``volume_add()`` (one of 200 identities, one recipient domain of
50), in one process; it prints the median µs per message of each, wall time
and this process' CPU time (less sensitive to a busy machine), and the
difference (the cost of the volume update).
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import socket
import statistics
import tempfile
import time

from outpost.store import Bucket, StoreSettings, open_store
from outpost.store.base import VolumeSpec
from tests.services.redis import RedisServer
from tests.services.sentinel import SentinelCluster


def run(url: str, seconds: float, seed: int, op: str = "hit", cpu: "list[float] | None" = None) -> int:
    """Run ``op`` for ``seconds``; return how many were made (and append
    this process' CPU seconds to ``cpu``)."""
    store = open_store(url, StoreSettings(key_prefix="bench:", on_store_error="tempfail"))
    if op == "message-busy":                     # one window: every subwindow filled
        end = time.perf_counter() + BUSY_WINDOW
        while time.perf_counter() < end:
            message(store, seed, False, busy=True)
            seed += 1
    cpu0 = time.process_time()
    users = [(Bucket(f"bench/u{i}", 10**9, 60.0), Bucket(f"bench/u{i}", 10**9, 3600.0))
             for i in range(200)]
    owner = f"{socket.gethostname()}:{os.getpid()}"
    n = seed
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(50):
            if op.startswith("message"):
                message(store, n, op == "message-pairs", busy=op == "message-busy")
            elif op == "hit":
                if not store.hit(users[n % 200]).allowed:
                    raise RuntimeError("bench bucket refused: limits too low")
            else:
                ip, slot = f"192.0.2.{n % 200}", f"{owner}:{n}"
                if not store.conn_acquire(ip, 10**6, slot)[0]:
                    raise RuntimeError("bench slot refused")
                store.conn_release(ip, slot)
            n += 1
    store.close()
    if cpu is not None:
        cpu.append(time.process_time() - cpu0)
    return n - seed


#: Window (s) of every bucket of ``--op message-busy``.
BUSY_WINDOW = 3.0


def message(store, n: int, pairs: bool, busy: bool = False) -> None:
    """The store calls of one message from one of 200 identities (four
    busy ones; see the module docstring)."""
    user = f"bench/u{n % (4 if busy else 200)}"
    windows = (BUSY_WINDOW,) * 3 if busy else (3600.0, 86400.0, 86400.0)
    buckets = [Bucket(f"rl:id:{user}:msg:60", 10**9, BUSY_WINDOW if busy else 60.0),
               Bucket(f"rl:id:{user}:msg:3600", 10**9, windows[0]),
               Bucket(f"rl:id:{user}:rcpt:86400", 10**9, windows[1], cost=2),
               Bucket("rl:user:bench:msg:86400", 10**9, windows[2])]
    if not store.hit(buckets, dry_run=True).allowed:
        raise RuntimeError("bench bucket refused: limits too low")
    fps = [f"b1:{kind}:{os.getpid()}-{n}" for kind in ("t", "m0", "m1", "m2", "m3", "u")]
    if pairs:
        tag = hashlib.blake2b(user.encode(), digest_size=12).hexdigest()   # as the bulk check's
        items = []
        for fp in fps:
            items += [(fp, user, 2), (f"{fp}:{tag}", user, 2)]
        store.fingerprint_add_many(items, 3600.0)
    else:
        store.fingerprint_add_message(fps, user, 2, 3600.0)
    if not store.hit(buckets).allowed:
        raise RuntimeError("bench bucket refused: limits too low")


def _child(url: str, seconds: float, seed: int, op: str,
           out: "multiprocessing.Queue[int]") -> None:
    out.put(run(url, seconds, seed, op))


def run_procs(url: str, seconds: float, procs: int, op: str) -> float:
    """Aggregate ops/s of ``procs`` processes hammering the same store."""
    ctx = multiprocessing.get_context("spawn")
    out: "multiprocessing.Queue[int]" = ctx.Queue()
    workers = [ctx.Process(target=_child, args=(url, seconds, i * 7919, op, out))
               for i in range(procs)]
    for w in workers:
        w.start()
    total = sum(out.get(timeout=seconds + 60) for _ in workers)
    for w in workers:
        w.join()
    return total / seconds


def volume_round(store, op: str, ops: int, seed: int) -> tuple[float, float]:
    """(wall µs, this process' CPU µs) per message of ``ops`` messages:
    ``hit`` alone or ``hit+volume`` (hit() then volume_add())."""
    spec = VolumeSpec(window=600.0, decay=0.5 ** (600.0 / (7 * 86400.0)), ttl=35 * 86400.0)
    users = [(Bucket(f"bench/u{i}", 10**9, 60.0), Bucket(f"bench/u{i}", 10**9, 3600.0))
             for i in range(200)]
    domains = [[f"{i:08x}"] for i in range(50)]
    wall, cpu = time.perf_counter(), time.process_time()
    for n in range(seed, seed + ops):
        store.hit(users[n % 200])
        if op == "hit+volume":
            store.volume_add(f"bench/u{n % 200}", domains[n % 50], 1, spec)
    return ((time.perf_counter() - wall) / ops * 1e6, (time.process_time() - cpu) / ops * 1e6)


def volume_cost(seconds: float, redis_url: "str | None", rounds: int) -> None:
    """``--op volume``: µs per message of hit() alone and of hit() +
    volume_add(), rounds alternating, per backend (see the module docstring)."""
    tmp = tempfile.mkdtemp(prefix="outpost-bench-")
    server = None
    rows = []
    try:
        if redis_url is None:
            server = RedisServer().start()
            redis_url = server.url
        urls = {"memory": "memory:", "sqlite": f"sqlite://{tmp}/bench.db", "redis": redis_url}
        for name, url in urls.items():
            store = open_store(url, StoreSettings(key_prefix="bench:", on_store_error="tempfail"))
            t0 = time.perf_counter()
            volume_round(store, "hit+volume", 200, 0)                  # warm-up, and ops per round
            ops = max(200, int(seconds / ((time.perf_counter() - t0) / 200)))
            got: dict[str, list[tuple[float, float]]] = {"hit": [], "hit+volume": []}
            for r in range(rounds):
                for op in (("hit", "hit+volume") if r % 2 == 0 else ("hit+volume", "hit")):
                    got[op].append(volume_round(store, op, ops, r * ops))
            store.close()
            med = {op: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
                   for op, v in got.items()}
            rows.append((name, med["hit"], med["hit+volume"]))
    finally:
        if server is not None:
            server.close()
    print(f"µs per message (wall / this process' CPU), median of {rounds} rounds of about "
          f"{seconds:g} s, one process; load average {os.getloadavg()[0]:.1f}")
    print(f"{'backend':10} {'hit()':>15} {'hit()+volume_add()':>20} {'volume_add()':>15}")
    for name, (aw, ac), (bw, bc) in rows:
        print(f"{name:10} {aw:7.1f} / {ac:5.1f} {bw:12.1f} / {bc:5.1f} {bw - aw:7.1f} / {bc - ac:5.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--redis-url")
    ap.add_argument("--op", choices=("hit", "slot", "volume", "message", "message-pairs", "message-busy"),
                    default="hit",
                    help="hit(): a rate-limit check; slot: take and free a connection slot; "
                         "volume: hit() with and without volume_add(); "
                         "message(-pairs): the store calls of one message")
    ap.add_argument("--backends", default="memory,sqlite,redis",
                    help="comma-separated: memory (always run: the ratios' base), sqlite, redis")
    ap.add_argument("--procs", type=int, default=2, help="processes of the second run")
    ap.add_argument("--no-sentinel", action="store_true",
                    help="skip the Redis-behind-Sentinel rows")
    ap.add_argument("--rounds", type=int, default=5,
                    help="rounds of Sentinel against direct (0: none)")
    args = ap.parse_args()
    if args.op == "volume":
        volume_cost(args.seconds, args.redis_url, max(1, args.rounds))
        return
    tmp = tempfile.mkdtemp(prefix="outpost-bench-")
    server = cluster = None
    redis_url = args.redis_url
    try:
        wanted = set(args.backends.split(",")) | {"memory"}
        if redis_url is None and "redis" in wanted:
            server = RedisServer().start()
            redis_url = server.url
        urls = {name: url for name, url in (("memory", "memory:"), ("sqlite", f"sqlite://{tmp}/bench.db"),
                                            ("redis", redis_url)) if name in wanted}
        if not args.no_sentinel and "redis" in wanted:
            cluster = SentinelCluster().start()
            urls["sentinel"] = cluster.url
            urls["redis-direct"] = cluster.master.url
        rows = []
        for name, url in urls.items():
            cpu: list[float] = []
            made = run(url, args.seconds, 0, args.op, cpu)
            many = run_procs(url, args.seconds, args.procs, args.op)
            rows.append((name, made / args.seconds, many, cpu[0] / made * 1e6))
        ratios: dict[str, list[float]] = {"1": [], str(args.procs): []}
        if cluster is not None:
            for r in range(args.rounds):
                pair = [urls["sentinel"], urls["redis-direct"]]
                if r % 2:
                    pair.reverse()
                got = {}
                for url in pair:
                    got[url] = (run(url, args.seconds, 0, args.op) / args.seconds,
                                run_procs(url, args.seconds, args.procs, args.op))
                for i, key in enumerate(ratios):
                    ratios[key].append(got[urls["sentinel"]][i] / got[urls["redis-direct"]][i])
    finally:
        if server is not None:
            server.close()
        if cluster is not None:
            cluster.close()
    base = rows[0][1]
    what = {"hit": "hit() over 2 buckets", "slot": "conn_acquire() + conn_release()",
            "message": "one message's store calls", "message-pairs": "one message's store calls "
            "(fingerprints in pairs)", "message-busy": "one message's store calls (busy buckets)"}[args.op]
    print(f"{what}, {args.seconds:g} s per run, ratio to memory (1 process)")
    print(f"{'backend':12} {'1 process ops/s':>16} {'ratio':>7} "
          f"{f'{args.procs} processes ops/s':>18} {'ratio':>7} {'CPU µs/op (1 process)':>22}")
    for name, one, many, cpu_op in rows:
        print(f"{name:12} {one:16,.0f} {one / base:7.3f} {many:18,.0f} {many / base:7.3f} {cpu_op:22.0f}")
    print(f"(memory with {args.procs} processes: separate, unshared stores; sentinel and "
          "redis-direct: the same master, with one replica)")
    for procs, values in ratios.items():
        if len(values) >= 2:
            q1, _, q3 = statistics.quantiles(values, n=4)
            print(f"sentinel / redis-direct, {procs} process(es), {len(values)} rounds: "
                  f"median {statistics.median(values):.3f} (quartiles {q1:.3f}-{q3:.3f})")


if __name__ == "__main__":
    main()
