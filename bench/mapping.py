#!/usr/bin/env python3
"""Micro-benchmark: user lookup by client address with 100 000 users and
1 000 000 networks (IPv4 and IPv6, mixed prefix lengths), and by login.

Prints lookups per second and the ratio to a baseline measured in the same
run: a plain dict hit on the exact address (the best any structure can do),
and — to show why a scan is not an option — a linear scan over only 10 000
networks.
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import time

from outpost.config.model import User
from outpost.core.mapping import UserIndex


def build(n_users: int, n_nets: int, seed: int = 1) -> tuple[list[User], list]:
    rnd = random.Random(seed)
    per_user = n_nets // n_users
    users, nets = [], set()
    for u in range(n_users):
        mine = []
        while len(mine) < per_user:
            if rnd.random() < 0.8:
                plen = rnd.choice((32, 32, 30, 29, 28, 27, 24, 22, 20, 16))
                addr = rnd.getrandbits(32)
                net = ipaddress.IPv4Network((addr >> (32 - plen) << (32 - plen), plen))
            else:
                plen = rnd.choice((128, 64, 56, 48))
                addr = (0x2001 << 112) | rnd.getrandbits(112)
                net = ipaddress.IPv6Network((addr >> (128 - plen) << (128 - plen), plen))
            if net not in nets:
                nets.add(net)
                mine.append(net)
        users.append(User(name=f"user{u}", type="ip", ips=tuple(mine), domains=frozenset({"example.com"})))
    for u in range(n_users // 10):
        users.append(User(name=f"login{u}", type="login", logins=(f"l{u}@example.com",),
                          domains=frozenset({"example.com"})))
    return users, sorted(nets, key=lambda n: (n.version, int(n.network_address)))


def rate(fn, items, seconds: float = 1.0) -> float:
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for x in items:
            fn(x)
        n += len(items)
    return n / (time.perf_counter() - start)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--networks", type=int, default=1_000_000)
    args = ap.parse_args()
    t0 = time.perf_counter()
    users, nets = build(args.users, args.networks)
    t1 = time.perf_counter()
    index = UserIndex(users)
    t2 = time.perf_counter()
    rnd = random.Random(2)
    probes = [ipaddress.ip_address(int(n.network_address)
                                   + (rnd.getrandbits(max(0, n.max_prefixlen - n.prefixlen))
                                      if n.prefixlen < n.max_prefixlen else 0)
                                   if n.version == 4 else int(n.network_address))
              for n in rnd.sample(nets, 2000)]
    misses = [ipaddress.ip_address(rnd.getrandbits(32)) for _ in range(2000)]
    assert all(index.by_ip(p) is not None for p in probes), "every probe must map"
    exact = {p: True for p in probes}
    small = nets[:10_000]

    def scan(addr):
        for n in small:
            if addr in n:
                return n
        return None

    logins = [f"l{i}@example.com" for i in range(0, args.users // 10, 7)][:2000]
    r_dict = rate(exact.get, probes)
    r_hit = rate(index.by_ip, probes)
    r_miss = rate(index.by_ip, misses)
    r_login = rate(index.by_login, logins)
    r_scan = rate(scan, probes[:20], seconds=1.0)
    print(f"users {len(users):,}  networks {len(nets):,}  (generate {t1 - t0:.1f}s, index build {t2 - t1:.1f}s)")
    print(f"{'lookup':34} {'per second':>14} {'ratio to dict':>14}")
    for name, r in (("dict hit on exact address (baseline)", r_dict), ("network lookup, mapped address", r_hit),
                    ("network lookup, unmapped address", r_miss), ("login lookup", r_login),
                    ("linear scan of 10,000 networks", r_scan)):
        print(f"{name:34} {r:14,.0f} {r / r_dict:14.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
