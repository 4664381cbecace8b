"""``outpost.adapter.service``: sd_notify over a real datagram socket, the
socket-activation variables, and the privilege drop (in a forked child, as
root)."""

from __future__ import annotations

import json
import os
import socket

import pytest

from outpost.adapter import service


@pytest.fixture
def notify_socket(tmp_path):
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(path))
        s.settimeout(5)
        yield str(path), s


def test_notify_sends_one_datagram_of_newline_separated_fields(notify_socket):
    path, s = notify_socket
    assert service.notify("READY=1", "STATUS=serving\nwith 2 workers", env={"NOTIFY_SOCKET": path})
    assert s.recv(4096) == b"READY=1\nSTATUS=serving with 2 workers"


def test_notify_abstract_socket():
    name = f"outpost-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        s.settimeout(5)
        assert service.notify("STOPPING=1", env={"NOTIFY_SOCKET": "@" + name})
        assert s.recv(4096) == b"STOPPING=1"


def test_notify_without_a_manager_does_nothing(tmp_path):
    assert not service.notify("READY=1", env={})
    # a socket that is gone: logged, not raised (the daemon keeps serving)
    assert not service.notify("READY=1", env={"NOTIFY_SOCKET": str(tmp_path / "gone")})


def test_reloading_carries_monotonic_usec():
    field = service.monotonic_usec()
    assert field.startswith("MONOTONIC_USEC=") and int(field.split("=")[1]) > 0


def test_listen_fds_for_this_process():
    a, b = socket.socketpair()
    try:
        # fd 3 must be a socket: put one there for the test
        saved = os.dup(3) if _fd_open(3) else None
        os.dup2(a.fileno(), 3)
        try:
            env = {"LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid()), "LISTEN_FDNAMES": "x",
                   "OTHER": "kept"}
            assert service.listen_fds(env) == [3]
            assert env == {"OTHER": "kept"}            # unset, as sd_listen_fds(1) does
        finally:
            if saved is not None:
                os.dup2(saved, 3)
                os.close(saved)
            else:
                os.close(3)
    finally:
        a.close()
        b.close()


def test_listen_fds_meant_for_another_process_are_ignored_and_unset():
    env = {"LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid() + 1)}
    assert service.listen_fds(env) == []
    assert env == {}
    assert service.listen_fds({}) == []


def test_listen_fds_that_are_not_sockets_are_refused(tmp_path):
    r, w = os.pipe()
    saved = os.dup(3) if _fd_open(3) else None
    os.dup2(r, 3)
    try:
        with pytest.raises(service.ServiceError, match="fd 3 is not a socket"):
            service.listen_fds({"LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid())})
    finally:
        if saved is not None:
            os.dup2(saved, 3)
            os.close(saved)
        else:
            os.close(3)
        os.close(r)
        os.close(w)


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_resolve_account_errors():
    assert service.resolve_account(None, None) is None
    with pytest.raises(service.ServiceError, match="does not exist"):
        service.resolve_account("no-such-user-outpost", None)
    with pytest.raises(service.ServiceError, match="needs --user"):
        service.resolve_account(None, "nogroup")
    with pytest.raises(service.ServiceError, match="that is root"):
        service.resolve_account("root", None)


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_drop_privileges_for_good(tmp_path):
    """In a forked child: after the drop, uid/gid (real, effective, saved)
    are nobody's, root cannot be regained, a root-only file cannot be read,
    and the check of the code directories names one it cannot read."""
    secret = tmp_path / "root-only"
    secret.write_text("x")
    secret.chmod(0o600)
    tmp_path.chmod(0o755)
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    account = service.resolve_account("nobody", "nogroup")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                   # child
        code = 1
        try:
            os.close(r)
            service.drop_privileges(account)
            ids = (os.getresuid(), os.getresgid(), os.getgroups())
            try:
                open(secret).read()
                readable = "readable"
            except PermissionError:
                readable = "denied"
            try:
                service.check_readable(account, ["/usr", str(private)])
                checked = "passed"
            except service.ServiceError as exc:
                checked = str(exc)
            os.write(w, json.dumps([*ids, readable, checked]).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as fh:
        out = fh.read()
    _, status = os.waitpid(pid, 0)
    assert status == 0, out
    uids, gids, groups, readable, checked = json.loads(out)
    assert checked == (f"user nobody cannot read {private}: install Python and Outpost where "
                       f"the service user can read them (e.g. /usr, /opt)")
    assert uids == [account.uid] * 3 and gids == [account.gid] * 3
    assert 0 not in groups
    assert readable == "denied"
