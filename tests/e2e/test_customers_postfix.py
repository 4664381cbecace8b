"""Customers provisioned in ``users.d`` files: a file added atomically and a
SIGHUP map a new customer through a real Postfix; a broken file is refused
with its name and line and the running customers keep working.  The
message statistics (``outpost stats``) count what went through."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.services.smtp import send

from .outpost_proc import E2E_CONFIG, ROOT, Outpost

FIRST = "- {name: first, type: ip, ips: [198.51.100.41/32], domains: [example.com]}\n"
NEW = "- {name: newcomer, type: ip, ips: [198.51.100.50/32], domains: [example.com]}\n"


@pytest.fixture(scope="module")
def outpost(postfix):
    proc = Outpost(postfix.milter_socket, "reports: {enabled: false}\n" + E2E_CONFIG)
    users = proc.dir / "users.d"
    users.mkdir()
    (users / "10-first.yaml").write_text(FIRST)
    proc.write_config("reports: {enabled: false}\nusers_from: [users.d/*.yaml]\n" + E2E_CONFIG)
    proc.start()
    yield proc
    proc.stop(graceful=False)


def provision(directory, name: str, text: str) -> None:
    """What a provisioning system does: write a temporary file in the same
    folder (its name does not end in .yaml, so a reload meanwhile skips it),
    then rename it into place."""
    tmp = directory / f".{name}.tmp"
    tmp.write_text(text)
    os.replace(tmp, directory / name)


def reload_and_wait(outpost: Outpost, what: str) -> None:
    before = outpost.log().count(what)
    os.kill(outpost.proc.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 20
    while outpost.log().count(what) == before:
        assert time.monotonic() < deadline, outpost.log()[-2000:]
        time.sleep(0.05)


def send_from(postfix, ip: str):
    return send(postfix.relay_port, xclient={"ADDR": ip}, mail_from="a@example.com",
                rcpt_tos=["x@dest.example"])


def accepted_within(postfix, ip: str, seconds: float = 20):
    """Send until accepted: the old workers stop only after the new ones serve."""
    deadline = time.monotonic() + seconds
    while True:
        r = send_from(postfix, ip)
        if r.accepted or time.monotonic() > deadline:
            return r
        time.sleep(0.2)


def cli(outpost: Outpost, *argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "milter"))
    return subprocess.run([sys.executable, "-m", "outpost", *argv, "-c", str(outpost.config_path)],
                          env=env, capture_output=True, text=True, timeout=60)


def test_a_new_file_and_sighup_map_a_new_customer(postfix, outpost, sink):
    assert send_from(postfix, "198.51.100.41").accepted           # from users.d/10-first.yaml
    r = send_from(postfix, "198.51.100.50")
    assert r.code == 550, r                                       # not provisioned yet
    provision(outpost.dir / "users.d", "20-newcomer.yaml", NEW)
    reload_and_wait(outpost, "configuration reloaded")
    r = accepted_within(postfix, "198.51.100.50")
    assert r.accepted, r
    got = [m for m in sink.wait_for(2) if m.headers("X-Outpost-User") == ["newcomer"]]
    assert got, [m.headers("X-Outpost-User") for m in sink.messages]


def test_a_broken_file_is_refused_naming_file_and_line(postfix, outpost, sink):
    bad = outpost.dir / "users.d" / "30-broken.yaml"
    provision(outpost.dir / "users.d", bad.name,
              "- {name: third, type: ip, ips: [198.51.100.60/32], domains: [example.com]}\n"
              "- {name: fourth, type: ip, ips: [198.51.100.999], domains: [example.com]}\n")
    try:
        reload_and_wait(outpost, "reload refused")
        assert (f"reload refused, keeping the running configuration: {bad}:2: users[1].ips[0]: "
                f"'198.51.100.999' is not an IP network") in outpost.log()
        assert send_from(postfix, "198.51.100.41").accepted       # the running customers still work
        assert send_from(postfix, "198.51.100.60").code == 550    # nothing of the broken file
        check = cli(outpost, "check-config", "--strict")
        assert check.returncode == 2 and f"{bad}:2: users[1].ips[0]" in check.stderr, check
    finally:
        bad.unlink()


def test_stats_count_the_messages_of_every_worker(postfix, outpost, sink):
    for _ in range(3):
        assert send_from(postfix, "198.51.100.41").accepted
    assert send_from(postfix, "198.51.100.77").code == 550        # unknown sender
    deadline = time.monotonic() + 20                              # workers flush every 2 s
    while True:
        r = cli(outpost, "stats", "--json")
        assert r.returncode == 0, r
        hour = json.loads(r.stdout)["last_hour"]
        users = {e["user"]: e["count"] for e in hour["top_users_by_messages"]}
        if users.get("first", 0) >= 3 and hour["block_reasons"].get("unknown_sender", 0) >= 1:
            break
        assert time.monotonic() < deadline, hour
        time.sleep(0.2)
    assert hour["messages"] >= 4 and hour["blocked"] >= 1 and hour["actions"]["accept"] >= 3
    top = cli(outpost, "top", "--json")
    assert top.returncode == 0 and json.loads(top.stdout) == {"top": []}   # no limits configured
