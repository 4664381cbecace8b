"""A worker keeps one glibc malloc arena (#14 soak: per-thread arenas grew a
worker's heap ~2 MB a minute).  Measured in a child process: threads that
allocate without the GIL (SQLite), then the heaps that ``malloc_info``
lists."""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent("""\
    import ctypes, sqlite3, sys, threading
    if sys.argv[1] == "limit":
        from outpost.adapter.server import limit_malloc_arenas
        assert limit_malloc_arenas()
    start = threading.Barrier(8)

    def work():
        db = sqlite3.connect(":memory:", check_same_thread=False)
        start.wait(timeout=30)
        for _ in range(30):
            db.execute("CREATE TABLE IF NOT EXISTS t (x)")
            db.executemany("INSERT INTO t VALUES (?)", ((i * "x",) for i in range(300)))
            db.execute("SELECT count(*), max(x) FROM t ORDER BY x").fetchone()
            db.execute("DELETE FROM t")
        db.close()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    libc = ctypes.CDLL(None)
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = (ctypes.c_char_p, ctypes.c_char_p)
    libc.malloc_info.argtypes = (ctypes.c_int, ctypes.c_void_p)
    libc.fclose.argtypes = (ctypes.c_void_p,)
    fp = libc.fopen(sys.argv[2].encode(), b"w")
    assert libc.malloc_info(0, fp) == 0
    libc.fclose(fp)
    """)


def heaps(tmp_path: Path, mode: str) -> int:
    out = tmp_path / f"malloc-{mode}.xml"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "milter"))
    env.pop("MALLOC_ARENA_MAX", None)
    subprocess.run([sys.executable, "-c", CHILD, mode, str(out)], env=env, check=True,
                   timeout=120)
    return out.read_text().count("<heap nr=")


@pytest.mark.skipif(not (sys.platform.startswith("linux") and ctypes.util.find_library("c")
                         and "glibc" in os.confstr("CS_GNU_LIBC_VERSION").lower()),
                    reason="glibc malloc only")
def test_worker_keeps_one_malloc_arena(tmp_path: Path) -> None:
    assert heaps(tmp_path, "free") > 1          # the test can see extra arenas ...
    assert heaps(tmp_path, "limit") == 1        # ... and the limit prevents them
