"""The state commands (locks, lock, unlock, reset, usage, train) work on the
shared store or fail: never "locked" from the command's own memory.

A real redis-server: one that runs, and a port where none listens."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from outpost.cli import main
from outpost.store import StoreSettings, open_store
from tests.services.redis import RedisServer

USERS = """\
report_abuse_to: abuse@example.net
domains: [example.com]
users:
  - {name: webfarm, type: ip, ips: [192.0.2.0/28], domains: [example.com],
     limits: {messages: ["5/1m"]}, user_limits: {messages: ["50/1m"]}}
"""


def write_config(tmp_path: Path, store: str, extra: str = "") -> Path:
    cfg = tmp_path / "outpost.yaml"
    cfg.write_text(f"store: {store}\n{extra}" + USERS)
    return cfg


STATE_COMMANDS = [
    ["lock", "webfarm/alice"],
    ["unlock", "webfarm/alice"],
    ["reset", "webfarm/alice"],
    ["reset", "webfarm"],
    ["locks"],
    ["usage", "webfarm"],
]


@pytest.mark.parametrize("on_error", ["local", "tempfail", "accept"])
@pytest.mark.parametrize("argv", STATE_COMMANDS, ids=lambda a: " ".join(a))
def test_unreachable_store_fails_with_exit_3(tmp_path, capsys, argv, on_error):
    srv = RedisServer()                      # a free port, never started: connection refused
    try:
        cfg = write_config(tmp_path, srv.url, textwrap.dedent(f"""\
            on_store_error: {on_error}
            store_options: {{connect_timeout: 0.2, op_timeout: 0.2}}
            """))
        code = main([*argv, "-c", str(cfg)])
    finally:
        srv.close()
    out, err = capsys.readouterr()
    assert code == 3, (out, err)
    assert out == ""                         # no "locked …", no table made up from nothing
    assert err.startswith("outpost: store error, the command did not complete: redis store "
                          f"{srv.url}"), err


@pytest.mark.parametrize("argv", STATE_COMMANDS, ids=lambda a: " ".join(a))
def test_memory_store_is_refused_by_state_commands(tmp_path, capsys, argv):
    cfg = write_config(tmp_path, "memory")
    assert main([*argv, "-c", str(cfg)]) == 3
    out, err = capsys.readouterr()
    assert out == "" and "is this process' memory, not shared state" in err, err


def test_lock_and_unlock_change_the_shared_store(tmp_path, capsys):
    with RedisServer() as srv:
        cfg = write_config(tmp_path, srv.url, "store_options: {key_prefix: 'cli:'}\n")
        assert main(["lock", "webfarm/alice", "-c", str(cfg)]) == 0
        assert capsys.readouterr().out.startswith("locked webfarm/alice")
        other = open_store(srv.url, StoreSettings(key_prefix="cli:", on_store_error="tempfail"))
        assert other.get_lock("webfarm/alice") is not None
        assert main(["unlock", "webfarm/alice", "-c", str(cfg)]) == 0
        assert other.get_lock("webfarm/alice") is None
        other.close()


def test_unlock_and_reset_of_a_do_not_touch_alice(tmp_path, capsys):
    """Key prefixes stop at a terminator: webfarm/a is not webfarm/alice."""
    cfg = write_config(tmp_path, f"sqlite:///{tmp_path}/state.db")
    store = open_store(f"sqlite:///{tmp_path}/state.db", StoreSettings(on_store_error="tempfail"))
    for ident in ("a", "alice"):
        store.record_event(f"hits:webfarm/{ident}", 600.0)
        store.record_event(f"spam:webfarm/{ident}", 600.0)
    store.set_lock("webfarm/a", "test", None)
    assert main(["unlock", "webfarm/a", "-c", str(cfg)]) == 0
    assert store.record_event("hits:webfarm/alice", 600.0) == 2
    assert store.record_event("spam:webfarm/alice", 600.0) == 2
    assert main(["reset", "webfarm/a", "-c", str(cfg)]) == 0
    assert store.record_event("hits:webfarm/alice", 600.0) == 3
    assert store.record_event("spam:webfarm/alice", 600.0) == 3
    assert store.record_event("spam:webfarm/a", 600.0) == 1
    store.close()


def test_reset_of_an_identity_forgets_its_volume_record(tmp_path, capsys):
    """After a hijacked mailbox is cleaned up, ``outpost reset`` lets it start
    again: its burst no longer counts (another identity's record stays)."""
    from outpost.store.base import VolumeSpec
    cfg = write_config(tmp_path, f"sqlite:///{tmp_path}/state.db")
    store = open_store(f"sqlite:///{tmp_path}/state.db", StoreSettings(on_store_error="tempfail"))
    spec = VolumeSpec(window=600.0, decay=0.5, ttl=3600.0)
    for ident in ("a", "alice", "a", "alice"):
        store.volume_add(f"webfarm/{ident}", ["d1"], 1, spec)
    assert main(["reset", "webfarm/a", "-c", str(cfg)]) == 0
    assert capsys.readouterr().out == "reset 1 counters of identity webfarm/a\n"
    assert store.volume_add("webfarm/a", ["d1"], 1, spec).messages == 1
    assert store.volume_add("webfarm/alice", ["d1"], 1, spec).messages == 3
    store.close()
