"""The daemon's log lines (outpost.logs): syslog datagrams with priority
and facility and no time stamp, the journal's native fields, sd-daemon
prefixes on a journal stderr, JSON objects, and the queue id on every line
about a message.  Real Unix datagram sockets bound by the tests stand in for
/dev/log and /run/systemd/journal/socket."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import struct
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outpost.config.model import LogSettings
from outpost.logs import QUEUE_ID, Fields, make_handler


@pytest.fixture
def dgram(tmp_path):
    """A Unix datagram socket bound by the test: (path, receive())."""
    path = str(tmp_path / "log.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)

    def receive() -> bytes:
        return sock.recv(1 << 20)
    yield path, receive
    sock.close()


@pytest.fixture
def logger():
    """A logger of Outpost's tree with the handler under test (and nothing else)."""
    lg = logging.getLogger("outpost.logtest")
    lg.propagate, lg.level = False, logging.DEBUG
    yield lg
    for h in list(lg.handlers):
        lg.removeHandler(h)
        h.close()
    lg.propagate, lg.level = True, logging.NOTSET


def use(logger, settings, **kw):
    handler, warning = make_handler(settings, **kw)
    logger.addHandler(handler)
    return handler, warning


def message_fields(qid="4XyZ01"):
    return Fields({"qid": qid, "ip": "192.0.2.5", "login": "", "user": "webfarm",
                   "identity": "1001", "from": "bob@example.com", "rcpts": 1, "size": 311,
                   "action": "accept", "reason": "ok", "class": "ham", "score": -1.25,
                   "evidence": ["bayes(-1.5)", "no_date(0.3)"], "dkim_d": "example.com",
                   "dkim_s": "s1", "spf": "pass", "ms": 2.5})


# -- syslog ---------------------------------------------------------------------------------

def test_syslog_line_is_priority_facility_ident_pid_and_no_timestamp(logger, dgram):
    path, receive = dgram
    use(logger, LogSettings(target="syslog", syslog_address=path))
    logger.info(message_fields(), extra={"qid": "4XyZ01"})
    line = receive()
    pid = os.getpid()
    assert line == (f"<22>outpost[{pid}]: outpost.logtest: 4XyZ01: qid=4XyZ01 ip=192.0.2.5 "
                    f"login=- user=webfarm identity=1001 from=<bob@example.com> rcpts=1 size=311 "
                    f"action=accept reason=ok class=ham score=-1.25 "
                    f"evidence=bayes(-1.5),no_date(0.3) dkim_d=example.com dkim_s=s1 spf=pass "
                    f"ms=2.5").encode()                      # mail.info = 2*8+6, no NUL after it


@pytest.mark.parametrize("level,facility,pri", [
    (logging.ERROR, "mail", 19), (logging.WARNING, "mail", 20), (logging.DEBUG, "mail", 23),
    (logging.CRITICAL, "mail", 18), (logging.INFO, "local3", 19 * 8 + 6), (logging.ERROR, "daemon", 27),
])
def test_syslog_priority_follows_level_and_facility(logger, dgram, level, facility, pri):
    path, receive = dgram
    use(logger, LogSettings(target="syslog", syslog_address=path, facility=facility))
    logger.log(level, "store error: %s", "down")
    assert receive().startswith(f"<{pri}>outpost[{os.getpid()}]: outpost.logtest: store error".encode())


def test_syslog_over_udp(logger):
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5)
    try:
        use(logger, LogSettings(target="syslog", syslog_address=f"udp:127.0.0.1:{rx.getsockname()[1]}"))
        logger.error("DKIM signing failed")
        assert rx.recv(65536) == f"<19>outpost[{os.getpid()}]: outpost.logtest: DKIM signing failed".encode()
    finally:
        rx.close()


def test_queue_id_of_the_current_message_on_every_line(logger, dgram):
    """A warning written while a message is served (store error, check
    failure…) carries the queue id the adapter set; none outside one."""
    path, receive = dgram
    use(logger, LogSettings(target="syslog", syslog_address=path))
    token = QUEUE_ID.set("7F3A2B1C")
    try:
        logger.warning("check bulk failed (ignore): timeout")
    finally:
        QUEUE_ID.reset(token)
    logger.info("worker 12 serving")
    assert receive().endswith(b": outpost.logtest: 7F3A2B1C: check bulk failed (ignore): timeout")
    assert receive().endswith(b"]: outpost.logtest: worker 12 serving")


def test_missing_syslog_socket_falls_back_to_stderr_with_a_warning(tmp_path):
    stream = io.StringIO()
    handler, warning = make_handler(LogSettings(target="syslog", syslog_address=str(tmp_path / "none")),
                                    stream=stream)
    assert isinstance(handler, logging.StreamHandler) and handler.stream is stream
    assert "no syslog daemon at" in warning and "standard error" in warning


# -- the journal --------------------------------------------------------------------------

def journal_fields(data: bytes) -> dict[str, list[str]]:
    """Parse a native journal datagram (both field encodings)."""
    out: dict[str, list[str]] = {}
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            key, value = line.split(b"=", 1)
            i = nl + 1
        else:
            key, (size,) = line, struct.unpack("<Q", data[nl + 1:nl + 9])
            value = data[nl + 9:nl + 9 + size]
            assert data[nl + 9 + size:nl + 10 + size] == b"\n"
            i = nl + 10 + size
        out.setdefault(key.decode(), []).append(value.decode())
    return out


def test_journal_datagram_fields(logger, dgram):
    path, receive = dgram
    handler, warning = use(logger, LogSettings(target="journal"), journal_path=path)
    assert warning is None
    logger.info(message_fields(), extra={"qid": "4XyZ01"})
    f = journal_fields(receive())
    assert f["PRIORITY"] == ["6"] and f["SYSLOG_FACILITY"] == ["2"]
    assert f["SYSLOG_IDENTIFIER"] == ["outpost"] and f["SYSLOG_PID"] == [str(os.getpid())]
    assert f["QUEUE_ID"] == ["4XyZ01"] and f["LOGGER"] == ["outpost.logtest"]
    assert f["MESSAGE"][0].startswith("outpost.logtest: 4XyZ01: qid=4XyZ01 ip=192.0.2.5 ")
    assert f["OUTPOST_SCORE"] == ["-1.25"] and f["OUTPOST_DKIM_D"] == ["example.com"]
    assert f["OUTPOST_EVIDENCE"] == ["bayes(-1.5),no_date(0.3)"] and f["OUTPOST_SPF"] == ["pass"]


def test_journal_error_with_traceback_is_one_entry_at_err(logger, dgram):
    path, receive = dgram
    use(logger, LogSettings(target="journal", facility="local0"), journal_path=path)
    try:
        raise KeyError("boom")
    except KeyError:
        logger.exception("internal error at eom")
    f = journal_fields(receive())
    assert f["PRIORITY"] == ["3"] and f["SYSLOG_FACILITY"] == ["16"] and "QUEUE_ID" not in f
    assert "internal error at eom\nTraceback (most recent call last)" in f["MESSAGE"][0]
    assert "KeyError: 'boom'" in f["MESSAGE"][0]


def test_missing_journal_falls_back_to_stderr_with_a_warning(tmp_path):
    stream = io.StringIO()
    handler, warning = make_handler(LogSettings(target="journal"), stream=stream,
                                    journal_path=str(tmp_path / "socket"))
    assert isinstance(handler, logging.StreamHandler) and "no journal at" in warning


# -- standard error -----------------------------------------------------------------------

def test_stderr_under_journald_has_sd_daemon_prefixes_and_no_timestamp(logger, tmp_path, monkeypatch):
    with open(tmp_path / "stream", "w+", encoding="utf-8") as fh:
        st = os.fstat(fh.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        use(logger, LogSettings(), stream=fh)
        token = QUEUE_ID.set("Q1")
        try:
            logger.info("mapped")
            try:
                raise KeyError("boom")
            except KeyError:
                logger.exception("internal error")
        finally:
            QUEUE_ID.reset(token)
        fh.seek(0)
        lines = fh.read().splitlines()
    assert lines[0] == "<6>outpost.logtest: Q1: mapped"
    assert lines[1] == "<3>outpost.logtest: Q1: internal error"
    assert all(line.startswith("<3>") for line in lines[2:]) and lines[-1] == "<3>KeyError: 'boom'"


def test_json_on_a_journal_stderr_has_the_priority_prefix(logger, tmp_path, monkeypatch):
    with open(tmp_path / "stream", "w+", encoding="utf-8") as fh:
        st = os.fstat(fh.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        use(logger, LogSettings(format="json"), stream=fh)
        logger.error("store error")
        fh.seek(0)
        line = fh.read().rstrip("\n")
    assert line.startswith("<3>{") and json.loads(line[3:])["msg"] == "store error"


def test_stderr_elsewhere_is_timestamped(logger, tmp_path, monkeypatch):
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")              # not this stream
    with open(tmp_path / "stream", "w+", encoding="utf-8") as fh:
        use(logger, LogSettings(), stream=fh)
        logger.warning("hello %s", "there")
        fh.seek(0)
        line = fh.read().rstrip("\n")
    date, clock, rest = line.split(" ", 2)
    assert len(date) == 10 and date[4] == "-" and "," in clock
    assert rest == f"outpost[{os.getpid()}] WARNING outpost.logtest: hello there"


# -- JSON ---------------------------------------------------------------------------------

def test_json_lines(logger):
    stream = io.StringIO()
    use(logger, LogSettings(format="json"), stream=stream)
    logger.info(message_fields(), extra={"qid": "4XyZ01"})
    token = QUEUE_ID.set("4XyZ02")
    try:
        try:
            raise ValueError("bad\nvalue")
        except ValueError:
            logger.exception("store error: %s", "down")
    finally:
        QUEUE_ID.reset(token)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2                                   # one object per line
    first, second = (json.loads(x) for x in lines)
    assert first["level"] == "info" and first["logger"] == "outpost.logtest"
    assert first["pid"] == os.getpid() and first["time"].endswith("Z") and "msg" not in first
    assert {k: first[k] for k in ("qid", "user", "identity", "action", "reason", "score", "evidence",
                                  "dkim_d", "dkim_s", "spf", "ms", "rcpts", "from")} == {
        "qid": "4XyZ01", "user": "webfarm", "identity": "1001", "action": "accept", "reason": "ok",
        "score": -1.25, "evidence": ["bayes(-1.5)", "no_date(0.3)"], "dkim_d": "example.com",
        "dkim_s": "s1", "spf": "pass", "ms": 2.5, "rcpts": 1, "from": "bob@example.com"}
    assert second["level"] == "error" and second["qid"] == "4XyZ02"
    assert second["msg"] == "store error: down" and "ValueError: bad\nvalue" in second["exc"]


def test_json_to_syslog(logger, dgram):
    path, receive = dgram
    use(logger, LogSettings(target="syslog", syslog_address=path, format="json"))
    logger.info(message_fields("Q9"), extra={"qid": "Q9"})
    prefix, _, body = receive().partition(b"]: ")
    assert prefix == f"<22>outpost[{os.getpid()}".encode()
    assert json.loads(body)["qid"] == "Q9"


def test_text_values_are_quoted_when_needed():
    text = str(Fields({"qid": "", "login": 'a "b"', "would": "reject (x=1)", "from": "", "n": None}))
    assert text == 'qid=- login="a \\"b\\"" would="reject (x=1)" from=<>'


def _old_text_value(key, value):
    """``Fields``' value writer before it became one loop (kept to compare)."""
    if isinstance(value, (list, tuple)):
        value = ",".join(map(str, value))
    elif not isinstance(value, str):
        return str(value)
    elif key == "from":
        return f"<{value}>"
    if not value:
        return "-"
    if " " in value or '"' in value or "=" in value:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


_text = st.text(st.sampled_from('ab =\\"-<>,\x00\n\u00e9'), max_size=8)
_value = (st.none() | _text | st.integers() | st.floats(allow_nan=False) | st.booleans()
          | st.lists(_text | st.integers(), max_size=3) | st.tuples(_text, st.floats()))


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.sampled_from(["from", "ip", "login", "rcpts", "evidence", "score", "k"]),
                       _value, max_size=7))
def test_text_line_is_unchanged(data):
    """The ``key=value`` line is the one the former per-value writer made."""
    expected = " ".join(f"{k}={_old_text_value(k, v)}" for k, v in data.items() if v is not None)
    assert str(Fields(dict(data))) == expected


def test_cli_keeps_a_level_only_setup(tmp_path):
    """``_setup_logging("info", stream)`` (bench/callbacks.py) still works."""
    from outpost.cli import _setup_logging
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    try:
        _setup_logging("warning", stream)
        logging.getLogger("outpost.x").warning("w")
        logging.getLogger("outpost.x").info("i")
    finally:
        for h in root.handlers:
            h.close()
        root.handlers[:], root.level = saved
    assert stream.getvalue().rstrip().endswith("WARNING outpost.x: w") and " i\n" not in stream.getvalue()
    assert sys.stderr is not stream
