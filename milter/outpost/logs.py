"""Outpost's log lines: where they go (``log.target``), how they look
(``log.format``), and the queue id of the message each one is about.

Targets:

- ``stderr``: for a terminal or a log file, ``TIME outpost[PID] LEVEL
  LOGGER: QID: text``.  Under systemd (standard error connected to the
  journal, as ``JOURNAL_STREAM`` says), the sd-daemon(3) form instead:
  ``<N>LOGGER: QID: text`` — the journal takes the priority from ``<N>`` and
  stamps the time itself.
- ``syslog``: RFC 3164 datagrams ``<PRI>outpost[PID]: LOGGER: QID: text`` to
  ``/dev/log`` (or ``udp:HOST:PORT``): priority and facility, no time stamp
  of our own (the syslog daemon adds it), so the lines land in mail.log next
  to Postfix's for the same queue id.
- ``journal``: the journal's native protocol (PRIORITY, SYSLOG_FACILITY,
  SYSLOG_IDENTIFIER, MESSAGE, QUEUE_ID and the per-message fields).

The queue id comes from the record (``extra={"qid": …}``) or else from
:data:`QUEUE_ID`, which the milter adapter sets for the connection being
served (one thread per connection, and set again at each callback).
"""

from __future__ import annotations

import contextvars
import json
import logging
import logging.handlers
import os
import re
import socket
import struct
import sys
import time
from typing import Any, Mapping, Optional, TextIO

from .config.model import LogSettings
from .core.headers import CONTROL

#: The queue id of the message the current callback is about ('' if none).
QUEUE_ID: contextvars.ContextVar[str] = contextvars.ContextVar("outpost_queue_id", default="")

JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENT = "outpost"

#: The lines' layouts (stock :class:`logging.Formatter` strings).  ``qid_prefix``
#: is ``"QID: "`` for a line about a message, as Postfix and OpenDKIM write it.
BODY = "%(name)s: %(qid_prefix)s%(message)s"
TEXT_FORMAT = "%(asctime)s outpost[%(process)d] %(levelname)s " + BODY
JOURNALD_STDERR_FORMAT = "<%(priority)d>" + BODY
SYSLOG_FORMAT = "outpost[%(process)d]: " + BODY

#: ``json.dumps(obj, ensure_ascii=False, default=str)``, the encoder built once.
_json_line = json.JSONEncoder(ensure_ascii=False, default=str).encode

#: Journal message bodies are cut here (one datagram; see :class:`JournalHandler`).
MAX_JOURNAL_MESSAGE = 64 * 1024


def priority(levelno: int) -> int:
    """The syslog severity of a logging level (err for ERROR, info for INFO…)."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


class Fields:
    """A structured log message: a dict built once, written as ``key=value``
    text (``str()``, what ``record.getMessage()`` returns) or, by the JSON
    format, as the object's own keys.  ``None`` values are left out."""

    __slots__ = ("data", "_text")

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self._text: Optional[str] = None

    def __str__(self) -> str:
        """``key=value`` for each value that is not ``None``: a list joined
        by commas, ``from`` in angle brackets, ``-`` for empty, quoted when
        it has a blank, a quote or an equals sign.  (One loop, no call per
        value: written once per message.)"""
        if self._text is None:
            parts = []
            for key, value in self.data.items():
                if value is None:
                    continue
                if isinstance(value, str):
                    if key == "from":
                        parts.append(f"from=<{value}>")
                        continue
                elif isinstance(value, (list, tuple)):
                    value = ",".join(map(str, value))
                else:
                    parts.append(f"{key}={value!s}")
                    continue
                if not value:
                    value = "-"
                elif " " in value or '"' in value or "=" in value:
                    value = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
                parts.append(f"{key}={value}")
            self._text = " ".join(parts)
        return self._text


class ContextFilter(logging.Filter):
    """Adds ``qid``, ``qid_prefix`` and ``priority`` to every record, and
    makes its message one clean line: controls a client sent (CR, LF, NUL,
    C1, U+2028/2029) become blanks, so one record is one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.msg, Fields):
            message = record.getMessage()
            if not message.isprintable():
                record.msg, record.args = CONTROL.sub(" ", message), None
        qid = getattr(record, "qid", None)
        if qid is None:
            qid = record.qid = QUEUE_ID.get()
        record.qid_prefix = f"{qid}: " if qid else ""
        record.priority = priority(record.levelno)
        return True


class JournaldStderrFormatter(logging.Formatter):
    """sd-daemon(3) lines: each line of a record (a traceback too) carries
    the ``<N>`` priority prefix, since the journal reads them one by one."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text.replace("\n", f"\n<{priority(record.levelno)}>") if "\n" in text else text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, pid,
    qid, then the message's fields (:class:`Fields`) or ``msg``, and ``exc``
    for a traceback.  ``tag``: the syslog tag ``outpost[PID]: `` before it;
    ``sd_priority``: the sd-daemon ``<N>`` prefix (standard error to the
    journal)."""

    def __init__(self, tag: bool = False, sd_priority: bool = False) -> None:
        super().__init__()
        self.tag = tag
        self.sd_priority = sd_priority

    def format(self, record: logging.LogRecord) -> str:
        text = self._json(record)
        if self.tag:
            return f"{IDENT}[{record.process}]: {text}"
        return f"<{priority(record.levelno)}>{text}" if self.sd_priority else text

    def _json(self, record: logging.LogRecord) -> str:
        created = record.created
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
                    + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
        }
        qid = getattr(record, "qid", "")
        if qid:
            out["qid"] = qid
        if isinstance(record.msg, Fields):
            out.update((k, v) for k, v in record.msg.data.items() if v is not None)
            if not out.get("qid"):
                out.pop("qid", None)            # no queue id (yet): no key, as for other lines
        else:
            out["msg"] = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return _json_line(out)


def _formatter(settings: LogSettings, text_format: str) -> logging.Formatter:
    if settings.format == "json":
        return JsonFormatter(tag=text_format == SYSLOG_FORMAT,
                             sd_priority=text_format == JOURNALD_STDERR_FORMAT)
    if text_format == JOURNALD_STDERR_FORMAT:
        return JournaldStderrFormatter(text_format)
    return logging.Formatter(text_format)


# -- the journal's native protocol -------------------------------------------------------------

_FIELD_NAME = re.compile(r"[^A-Z0-9_]")


def journal_field(name: str, value: Any) -> bytes:
    """One field of a native journal datagram (systemd's journal native
    protocol): ``NAME=value\\n``, or for a value with a newline
    ``NAME\\n`` + its length (64-bit little endian) + value + ``\\n``."""
    data = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")
    key = name.encode("ascii")
    if b"\n" in data:
        return key + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    return key + b"=" + data + b"\n"


def journal_name(key: str) -> str:
    """A per-message field's journal name: ``OUTPOST_`` + its key upper-cased."""
    return "OUTPOST_" + _FIELD_NAME.sub("_", key.upper())


class JournalHandler(logging.Handler):
    """Writes records to the journal's native socket, one datagram each."""

    def __init__(self, facility: int, path: str = JOURNAL_SOCKET, identifier: str = IDENT) -> None:
        super().__init__()
        self.path = path
        self.facility = facility
        self.identifier = identifier
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.set_inheritable(False)

    def datagram(self, record: logging.LogRecord) -> bytes:
        message = self.format(record)
        if len(message) > MAX_JOURNAL_MESSAGE:
            message = message[:MAX_JOURNAL_MESSAGE] + " [cut]"
        parts = [journal_field("MESSAGE", message),
                 journal_field("PRIORITY", priority(record.levelno)),
                 journal_field("SYSLOG_FACILITY", self.facility),
                 journal_field("SYSLOG_IDENTIFIER", self.identifier),
                 journal_field("SYSLOG_PID", record.process),
                 journal_field("LOGGER", record.name)]
        qid = getattr(record, "qid", "")
        if qid:
            parts.append(journal_field("QUEUE_ID", qid))
        if isinstance(record.msg, Fields):
            for key, value in record.msg.data.items():
                if value is not None and key != "qid":
                    if isinstance(value, (list, tuple)):
                        value = ",".join(str(v) for v in value)
                    parts.append(journal_field(journal_name(key), value))
        return b"".join(parts)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sock.sendto(self.datagram(record), self.path)
        except Exception:  # noqa: BLE001 - logging.Handler's contract: report, never raise
            self.handleError(record)

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            super().close()


def journal_available(path: str = JOURNAL_SOCKET) -> bool:
    """True when a journal daemon listens on ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


# -- standard error ---------------------------------------------------------------------------

def stderr_is_journal(stream: TextIO, environ: Mapping[str, str] = os.environ) -> bool:
    """True when ``stream`` is the journal stream systemd connected
    (``JOURNAL_STREAM=DEV:INODE`` names it; sd-daemon's rule: compare them
    with the stream's own, so that a redirected stderr is not mistaken)."""
    value = environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):      # not a real file (tests' StringIO)
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


# -- setting it all up ------------------------------------------------------------------------

def make_handler(settings: LogSettings, stream: Optional[TextIO] = None,
                 journal_path: str = JOURNAL_SOCKET) -> tuple[logging.Handler, Optional[str]]:
    """The handler ``settings`` ask for, and a warning when it had to fall
    back to standard error (the syslog or journal socket is not there)."""
    stream = stream if stream is not None else sys.stderr
    warning = None
    handler: Optional[logging.Handler] = None
    text_format = SYSLOG_FORMAT
    if settings.target == "syslog":
        udp = settings.syslog_udp
        try:
            handler = logging.handlers.SysLogHandler(
                address=udp if udp is not None else settings.syslog_address,
                facility=settings.facility_code)
        except OSError as exc:                  # udp: the host does not resolve
            warning = (f"log.target syslog: cannot use {settings.syslog_address} "
                       f"({exc.strerror or exc}); logging to standard error")
        else:
            if handler.unixsocket and handler.socktype is None:     # nobody listens there
                handler.close()
                handler = None
                warning = (f"log.target syslog: no syslog daemon at {settings.syslog_address}; "
                           f"logging to standard error")
            else:
                # One datagram is one line: no NUL after it (a stream
                # socket needs it as the separator).
                handler.append_nul = handler.socktype != socket.SOCK_DGRAM
    elif settings.target == "journal":
        if journal_available(journal_path):
            handler = JournalHandler(settings.facility_code, journal_path)
            text_format = BODY
        else:
            warning = f"log.target journal: no journal at {journal_path}; logging to standard error"
    if handler is None:
        handler = logging.StreamHandler(stream)
        text_format = JOURNALD_STDERR_FORMAT if stderr_is_journal(stream) else TEXT_FORMAT
    handler.setFormatter(_formatter(settings, text_format))
    handler.addFilter(ContextFilter())
    return handler, warning


def setup_logging(settings: LogSettings, stream: Optional[TextIO] = None,
                  journal_path: str = JOURNAL_SOCKET) -> logging.Handler:
    """Configure the root logger for the daemon (again on reload: the old
    handler is closed and replaced)."""
    # libmilter calls us from threads Python did not create: a log record's
    # threadName would make threading register a _DummyThread for each new
    # connection thread (slow, and never freed).  We log no thread names.
    logging.logThreads = False
    logging.logMultiprocessing = False
    handler, warning = make_handler(settings, stream, journal_path)
    logging.basicConfig(level=getattr(logging, settings.level.upper()), handlers=[handler],
                        force=True)
    if warning:
        logging.getLogger("outpost").warning("%s", warning)
    return handler
