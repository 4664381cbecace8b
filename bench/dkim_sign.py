#!/usr/bin/env python3
"""DKIM signing throughput: plain dkimpy vs Outpost's Signer (dkimpy
canonicalisation + OpenSSL key operation), RSA-2048 vs ed25519 vs both,
in one process and in 2 processes.  Ratios are against plain dkimpy
RSA-2048 in one process, measured in the same run.

    python -m bench.dkim_sign [--seconds 1.5] [--body-kb 8]
"""

from __future__ import annotations

import argparse
import base64
import multiprocessing as mp
import os
import tempfile
import time

import dkim
from cryptography.hazmat.primitives import serialization

from outpost.effects.dkim import DkimKey, DkimSettings, Signer, keygen

DOMAIN = "example.test"


def message(body_kb: int) -> tuple[list[tuple[bytes, bytes]], bytes]:
    headers = [
        (b"From", b" Alice <alice@example.test>"),
        (b"To", b" bob@example.org"),
        (b"Subject", b" Benchmark message"),
        (b"Date", b" Thu, 1 Jan 2026 00:00:00 +0000"),
        (b"Message-ID", b" <bench@example.test>"),
        (b"MIME-Version", b" 1.0"),
        (b"Content-Type", b" text/plain; charset=utf-8"),
        (b"X-Outpost-ID", b" u1"),
    ]
    line = b"The quick brown fox jumps over the lazy dog, again and again.\r\n"
    body = line * max(1, body_kb * 1024 // len(line))
    return headers, body


def make_job(kind: str, keys: dict, body_kb: int):
    headers, body = message(body_kb)
    if kind.startswith("dkimpy"):
        raw = b"".join(n + b":" + v + b"\r\n" for n, v in headers) + b"\r\n" + body
        if kind == "dkimpy-rsa":
            priv, alg = open(keys["rsa"], "rb").read(), b"rsa-sha256"
        else:
            k = serialization.load_pem_private_key(open(keys["ed25519"], "rb").read(), None)
            priv = base64.b64encode(k.private_bytes(serialization.Encoding.Raw,
                                                    serialization.PrivateFormat.Raw,
                                                    serialization.NoEncryption()))
            alg = b"ed25519-sha256"

        def job() -> int:
            dkim.DKIM(raw).sign(b"s", DOMAIN.encode(), priv, signature_algorithm=alg,
                                canonicalize=(b"relaxed", b"relaxed"))
            return 1
        return job
    algs = {"outpost-rsa": ["rsa"], "outpost-ed25519": ["ed25519"],
            "outpost-both": ["rsa", "ed25519"]}[kind]
    settings = DkimSettings(keys=tuple(DkimKey(DOMAIN, f"s{a}", keys[a], a) for a in algs))
    signer = Signer(settings)

    def job() -> int:
        return len(signer.sign(headers, body, DOMAIN))
    return job


def run(kind: str, keys: dict, body_kb: int, seconds: float) -> tuple[int, int]:
    """(messages, signatures) signed in ``seconds``."""
    job = make_job(kind, keys, body_kb)
    job()  # warm up
    n = sigs = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        sigs += job()
        n += 1
    return n, sigs


def _worker(args):
    return run(*args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--body-kb", type=int, default=8)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        keys = {"rsa": keygen(DOMAIN, "srsa", "rsa", 2048, d)[0],
                "ed25519": keygen(DOMAIN, "sed25519", "ed25519", 0, d)[0]}
        print(f"DKIM signing, relaxed/relaxed, body {a.body_kb} KiB, {a.seconds}s per row, "
              f"{os.cpu_count()} CPUs")
        print(f"{'variant':<18}{'procs':>6}{'msg/s':>10}{'sig/s':>10}{'ms/msg':>9}"
              f"{'x baseline':>12}")
        base = None
        kinds = ["dkimpy-rsa", "dkimpy-ed25519", "outpost-rsa", "outpost-ed25519",
                 "outpost-both"]
        for procs in (1, 2):
            for kind in kinds:
                if procs == 1:
                    n, s = run(kind, keys, a.body_kb, a.seconds)
                else:
                    with mp.get_context("fork").Pool(procs) as pool:
                        res = pool.map(_worker, [(kind, keys, a.body_kb, a.seconds)] * procs)
                    n, s = sum(r[0] for r in res), sum(r[1] for r in res)
                rate = n / a.seconds
                base = base or rate
                print(f"{kind:<18}{procs:>6}{rate:>10.0f}{s / a.seconds:>10.0f}"
                      f"{1000 * procs / rate:>9.2f}{rate / base:>12.1f}")
        print("baseline = dkimpy-rsa, 1 process; ms/msg is per process")


if __name__ == "__main__":
    main()
