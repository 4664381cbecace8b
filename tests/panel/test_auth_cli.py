"""Panel passwords, the login limiter, session lifetime, and the
``outpost panel`` / ``outpost panel passwd`` commands."""

from __future__ import annotations

import subprocess
import sys

import pytest

from outpost.cli import main
from outpost.config import parse_config
from outpost.panel.app import Sessions
from outpost.panel.auth import LoginLimiter, check_hash_format, hash_password, verify_login, verify_password
from outpost.store.memory import MemoryStore

from .conftest import panel_yaml


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_hash_and_verify() -> None:
    h = hash_password("s3cret pass", n=16)
    assert check_hash_format(h) is None
    assert verify_password("s3cret pass", h)
    assert not verify_password("s3cret pasS", h)
    assert not verify_password("s3cret pass", h.replace("scrypt", "bcrypt"))
    assert hash_password("s3cret pass", n=16) != h                 # salted
    assert not verify_login("anything", None)                      # unknown account
    for bad in ("", "scrypt$16$8$1$x$y", "scrypt$15$8$1$AAAAAAAAAAA=$AAAAAAAAAAAAAAAAAAAAAA==", 42):
        assert check_hash_format(bad) is not None, bad


def test_limiter_window() -> None:
    clock = Clock()
    lim = LoginLimiter(MemoryStore(clock=clock), 2, 60.0)
    assert lim.attempt("ip:a", "user:x") == 0
    assert lim.attempt("ip:a", "user:y") == 0
    assert 60.0 <= lim.attempt("ip:a") <= 62.0           # 2 per 60 s (1 s subwindows)
    assert lim.attempt("user:x") == 0                    # other keys are free
    clock.t += 30
    assert lim.attempt("ip:a", "user:z") > 0             # refused: nothing counted for user:z
    assert lim.attempt("user:z") == 0
    clock.t += 32
    assert lim.attempt("ip:a") == 0
    assert lim.attempt("ip:b") == 0 and lim.attempt("ip:b") == 0
    lim.succeeded("ip:b")
    assert lim.attempt("ip:b") == 0


def test_limiter_keys_never_overlap_on_reset() -> None:
    # ':' and '/' are quoted: forgetting "user:a" keeps "user:a:b" (and IPv6 prefixes)
    lim = LoginLimiter(MemoryStore(clock=Clock()), 1, 60.0)
    assert lim.attempt("user:a:b") == 0 and lim.attempt("ip:::1:2") == 0
    lim.succeeded("user:a", "ip:::1")
    assert lim.attempt("user:a:b") > 0 and lim.attempt("ip:::1:2") > 0


def test_sessions_end_after_their_lifetime() -> None:
    clock = Clock()
    sessions = Sessions(100.0, clock)
    sid = sessions.new("ops")
    assert sessions.get(sid).user == "ops"
    clock.t += 99
    assert sessions.get(sid) is not None
    clock.t += 2
    assert sessions.get(sid) is None
    assert sessions.get(None) is None and sessions.get(["x"]) is None


def test_passwd_prints_a_usable_line(tmp_path) -> None:
    out = subprocess.run([sys.executable, "-m", "outpost", "panel", "passwd", "alice", "--role",
                          "operator"], input="long enough password\n", capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    line = out.stdout.splitlines()[-1]
    assert line.startswith("- {name: alice, role: operator, password_hash: ")
    yaml = panel_yaml().split("panel:")[0] + "panel:\n  users:\n    " + line + "\n"
    [user] = parse_config(yaml).panel.users
    assert verify_password("long enough password", user.password_hash)


def test_passwd_refuses_short_passwords_and_bad_names(capsys, monkeypatch) -> None:
    import io
    monkeypatch.setattr(sys, "stdin", io.StringIO("short\n"))
    assert main(["panel", "passwd", "alice"]) == 1
    monkeypatch.setattr(sys, "stdin", io.StringIO("long enough password\n"))
    assert main(["panel", "passwd", "bad name"]) == 2
    assert main(["panel", "passwd"]) == 2
    assert "at least 8" in capsys.readouterr().err


def test_panel_without_accounts_does_not_start(tmp_path, capsys) -> None:
    cfg = tmp_path / "outpost.yaml"
    cfg.write_text(panel_yaml().split("panel:")[0].replace("store: memory", f"store: sqlite:///{tmp_path}/s.db"))
    assert main(["panel", "-c", str(cfg)]) == 1
    assert "no panel accounts" in capsys.readouterr().err


def test_panel_without_flask_says_what_to_install(tmp_path, capsys, monkeypatch) -> None:
    import builtins
    real_import = builtins.__import__

    def no_flask(name, *args, **kwargs):
        if name.split(".")[0] in ("flask", "waitress"):
            raise ImportError(f"No module named '{name}'")
        return real_import(name, *args, **kwargs)
    for mod in [m for m in sys.modules if m.startswith("outpost.panel.app")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(builtins, "__import__", no_flask)
    cfg = tmp_path / "outpost.yaml"
    cfg.write_text(panel_yaml().replace("store: memory", f"store: sqlite:///{tmp_path}/s.db"))
    assert main(["panel", "-c", str(cfg)]) == 1
    assert "python3-waitress" in capsys.readouterr().err


def test_panel_store_error_hides_the_password() -> None:
    """A store the panel cannot open is named with its password as ``***``."""
    from outpost.panel.serve import PanelStartError, build
    cfg = parse_config(panel_yaml().replace("store: memory",
                                            "store: redis://:hunter2@127.0.0.1:1/0?socket_timeout=abc"))
    with pytest.raises(PanelStartError) as err:
        build(cfg)
    assert str(err.value).startswith("store redis://:***@127.0.0.1:1/0"), err.value
    assert "hunter2" not in str(err.value)
