"""Log lines written while the adapter serves a message carry its queue id
(the policy's own warnings too), and the per-message line is one JSON
object with the message's fields.  Driven through Milter.testctx.TestCtx;
lines read from a real Unix datagram socket standing in for /dev/log."""

from __future__ import annotations

import json
import logging
import os
import socket

import pytest

from outpost.config.model import LogSettings
from outpost.logs import make_handler
from outpost.store.base import StoreError

from .test_milter_testctx import feed, runtime  # noqa: F401 - the fixture


@pytest.fixture
def syslog(tmp_path):
    """Outpost's loggers writing JSON to a syslog socket bound here; yields receive()."""
    path = str(tmp_path / "dev-log")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(path)
    rx.settimeout(5)
    handler, warning = make_handler(LogSettings(target="syslog", syslog_address=path, format="json"))
    assert warning is None
    top = logging.getLogger("outpost")
    saved = top.level
    top.addHandler(handler)
    top.setLevel(logging.INFO)

    def receive() -> list[tuple[int, dict]]:
        """Every line sent so far: (syslog PRI, JSON object)."""
        out = []
        rx.setblocking(False)
        try:
            while True:
                data = rx.recv(1 << 20)
                pri, _, rest = data.partition(b">")
                tag, _, body = rest.partition(b": ")
                assert tag == f"outpost[{os.getpid()}]".encode(), data
                out.append((int(pri[1:]), json.loads(body)))
        except BlockingIOError:
            return out
    yield receive
    top.removeHandler(handler)
    top.setLevel(saved)
    handler.close()
    rx.close()


def test_store_error_during_a_message_carries_its_queue_id(runtime, syslog, monkeypatch):  # noqa: F811 - the fixture imported above
    def down(*args, **kwargs):
        raise StoreError("connection refused")
    monkeypatch.setattr(runtime.store, "hit", down)
    ctx, rc = feed(qid="QSTORE1")
    ctx._close()
    lines = syslog()
    errors = [obj for pri, obj in lines if pri == 19]             # mail.err
    assert errors and all(obj["qid"] == "QSTORE1" for obj in errors), lines
    assert any("store error" in obj["msg"] and "connection refused" in obj["msg"] for obj in errors)
    [(pri, line)] = [(p, o) for p, o in lines if o["logger"] == "outpost.message"]
    assert pri == 22 and line["qid"] == "QSTORE1"                 # mail.info
    assert (line["action"], line["reason"], line["user"]) == ("tempfail", "store_error", "webfarm")


def test_message_line_fields_and_no_stale_queue_id(runtime, syslog):  # noqa: F811 - the fixture imported above
    ctx, _ = feed(qid="QLOG7")
    ctx._close()
    ctx2, _ = feed(ip="198.51.100.9", qid="")                    # no queue id macro
    ctx2._close()
    lines = [obj for _, obj in syslog() if obj["logger"] == "outpost.message"]
    assert len(lines) == 2
    first, second = lines
    assert {k: first[k] for k in ("qid", "ip", "user", "identity", "from", "rcpts", "action",
                                  "reason", "login")} == {
        "qid": "QLOG7", "ip": "192.0.2.5", "user": "webfarm", "identity": "1001",
        "from": "bob@example.com", "rcpts": 1, "action": "accept", "reason": "ok", "login": ""}
    assert isinstance(first["ms"], float) and first["size"] > 0 and first["level"] == "info"
    assert "qid" not in second and second["reason"] == "unknown_sender"     # not QLOG7
