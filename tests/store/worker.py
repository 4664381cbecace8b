"""Child process for the cross-process store tests.

``python worker.py hammer URL PREFIX KEY LIMIT THREADS N START``: THREADS
threads each call ``hit()`` N times on one LIMIT/60s bucket from wall-clock
time START on; prints the number admitted.

``python worker.py slots URL PREFIX IP COUNT HEARTBEAT``: takes COUNT slots of
IP for this pid, prints ``ready`` and sleeps until killed.

``python worker.py grab URL PREFIX IP LIMIT THREADS N START``: THREADS threads
each try N new slots of IP (limit LIMIT) from wall-clock time START on, and
keep what they get; prints the number taken, then how many the store counts,
and holds the slots until its stdin is closed.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time

from outpost.store import Bucket, StoreSettings, open_store


def _in_threads(run, n: int) -> None:
    """run(0) … run(n-1), each on its own thread; return when all are done."""
    pool = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()


def hammer(url: str, prefix: str, key: str, limit: str, threads: str, n: str,
           start: str) -> None:
    store = open_store(url, StoreSettings(key_prefix=prefix, on_store_error="tempfail"))
    bucket = [Bucket(key, int(limit), 60.0)]
    admitted = [0] * int(threads)

    def run(i: int) -> None:
        time.sleep(max(0.0, float(start) - time.time()))
        for _ in range(int(n)):
            if store.hit(bucket).allowed:
                admitted[i] += 1

    _in_threads(run, int(threads))
    print(sum(admitted), flush=True)


def slots(url: str, prefix: str, ip: str, count: str, heartbeat: str) -> None:
    store = open_store(url, StoreSettings(key_prefix=prefix, heartbeat_ttl=float(heartbeat),
                                           on_store_error="tempfail"))
    host, pid = socket.gethostname(), os.getpid()
    store.process_alive(host, pid)
    for n in range(int(count)):
        ok, _held = store.conn_acquire(ip, 100, f"{host}:{pid}:{n}")
        assert ok
    print("ready", flush=True)
    time.sleep(60)


def grab(url: str, prefix: str, ip: str, limit: str, threads: str, n: str, start: str) -> None:
    store = open_store(url, StoreSettings(key_prefix=prefix, on_store_error="tempfail"))
    host, pid = socket.gethostname(), os.getpid()
    store.process_alive(host, pid)
    taken = [0] * int(threads)

    def run(i: int) -> None:
        time.sleep(max(0.0, float(start) - time.time()))
        for k in range(int(n)):
            ok, _held = store.conn_acquire(ip, int(limit), f"{host}:{pid}:{i}-{k}")
            taken[i] += ok

    _in_threads(run, int(threads))
    print(sum(taken), flush=True)
    # Stay alive (holding the slots) until the test closes our stdin: a
    # process that exited early would be dead, and its slots rightly freed
    # for the other one when the IP reaches its limit.
    sys.stdin.read()


if __name__ == "__main__":
    {"hammer": hammer, "slots": slots, "grab": grab}[sys.argv[1]](*sys.argv[2:])
