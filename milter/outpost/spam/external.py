"""Checks that ask an external spam engine: SpamAssassin's ``spamd`` and
``rspamd``.

Both clients talk over one TCP or unix-domain socket with a hard deadline
for the whole exchange (connect, send, receive): ``timeout`` seconds in
total, whatever the server does (refuses, accepts and never answers,
trickles bytes).  Replies are bounded in size.  Every failure raises
:class:`~outpost.spam.base.CheckError` with a message naming the engine,
its address and the cause; the scoring engine then applies the check's
failure policy (``on_error``: ``ignore`` or ``tempfail``).

The engine's own score joins ours as one piece of evidence, its score
multiplied by ``weight``: ``spamassassin(P)`` and ``rspamd(P)``.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import json
import math
import re
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

from .base import Check, CheckError, Evidence, MessageView, ScanContext

ON_ERROR = ("ignore", "tempfail")
OVERSIZE = ("skip", "truncate")
SPAMD_COMMANDS = ("SYMBOLS", "CHECK", "REPORT")
#: Largest reply accepted from an engine (a REPORT or a JSON verdict).
MAX_REPLY = 1_048_576
#: Longest value we put into a protocol header.
MAX_HEADER_VALUE = 512
_TOKEN_RE = re.compile(r"^[A-Za-z0-9._@+=-]{1,64}$")


def _validate_common(s: Union["SpamdSettings", "RspamdSettings"], engine: str) -> None:
    """Checks shared by both settings classes."""
    if s.socket:
        if not s.socket.startswith("/"):
            raise ValueError(f"{engine}.socket must be an absolute path, got {s.socket!r}")
    else:
        if not s.host or any(c.isspace() for c in s.host):
            raise ValueError(f"{engine}.host must be a host name or IP, got {s.host!r}")
        if not isinstance(s.port, int) or not 0 < s.port < 65536:
            raise ValueError(f"{engine}.port must be 1..65535, got {s.port!r}")
    if not isinstance(s.timeout, (int, float)) or not 0 < s.timeout <= 120:
        raise ValueError(f"{engine}.timeout must be > 0 and <= 120 seconds, got {s.timeout!r}")
    if not isinstance(s.weight, (int, float)) or not math.isfinite(s.weight) or s.weight < 0:
        raise ValueError(f"{engine}.weight must be a finite number >= 0, got {s.weight!r}")
    if not isinstance(s.max_size, int) or s.max_size < 1024:
        raise ValueError(f"{engine}.max_size must be an integer >= 1024 bytes, got {s.max_size!r}")
    if s.on_error not in ON_ERROR:
        raise ValueError(f"{engine}.on_error must be one of {', '.join(ON_ERROR)}, "
                         f"got {s.on_error!r}")
    if s.oversize not in OVERSIZE:
        raise ValueError(f"{engine}.oversize must be one of {', '.join(OVERSIZE)}, "
                         f"got {s.oversize!r}")


@dataclass(frozen=True)
class SpamdSettings:
    """Where and how to ask SpamAssassin's spamd.

    ``socket`` (a unix socket path) wins over ``host``/``port``.
    ``timeout`` bounds the whole exchange.  Messages larger than
    ``max_size`` bytes are not sent (``oversize: skip``, like spamc) or
    sent cut at the last line break before the limit (``truncate``).
    ``user`` is sent as the spamd ``User`` header (per-user preferences
    on the spamd side).  ``command``: ``SYMBOLS`` (score and rule names),
    ``CHECK`` (score only) or ``REPORT`` (score and the text report)."""

    host: str = "127.0.0.1"
    port: int = 783
    socket: str = ""
    timeout: float = 10.0
    weight: float = 1.0
    max_size: int = 512 * 1024
    oversize: str = "skip"
    on_error: str = "ignore"
    user: str = "outpost"
    command: str = "SYMBOLS"

    def __post_init__(self) -> None:
        _validate_common(self, "spamd")
        if not _TOKEN_RE.match(self.user):
            raise ValueError(f"spamd.user must be 1-64 characters of [A-Za-z0-9._@+=-], "
                             f"got {self.user!r}")
        if self.command not in SPAMD_COMMANDS:
            raise ValueError(f"spamd.command must be one of {', '.join(SPAMD_COMMANDS)}, "
                             f"got {self.command!r}")


@dataclass(frozen=True)
class RspamdSettings:
    """Where and how to ask rspamd (its ``normal`` worker, ``/checkv2``).

    The default ``weight`` maps rspamd's default reject threshold (15)
    onto Outpost's default spam threshold (5).  ``password`` is sent as
    the ``Password`` header (only needed when talking to a controller)."""

    host: str = "127.0.0.1"
    port: int = 11333
    socket: str = ""
    timeout: float = 10.0
    weight: float = 1.0 / 3.0
    max_size: int = 2 * 1024 * 1024
    oversize: str = "skip"
    on_error: str = "ignore"
    password: str = ""
    path: str = "/checkv2"

    def __post_init__(self) -> None:
        _validate_common(self, "rspamd")
        if not self.path.startswith("/") or any(c.isspace() or ord(c) < 32 for c in self.path):
            raise ValueError(f"rspamd.path must be an absolute URL path, got {self.path!r}")
        if any(ord(c) < 32 or ord(c) == 127 for c in self.password):
            raise ValueError("rspamd.password must not contain control characters")


def _header_value(value: Optional[str]) -> str:
    """A value safe to put in a protocol header: control characters
    (CR, LF, NUL, …) removed, bounded length; '' when nothing is left."""
    if not value:
        return ""
    cleaned = "".join(c for c in value if c >= " " and c != "\x7f")
    return cleaned.strip()[:MAX_HEADER_VALUE]


def _payload(msg: MessageView, max_size: int, oversize: str) -> Optional[bytes]:
    """The bytes to send, or None when the message is too large to send.
    Raises CheckError when the view carries no message bytes."""
    raw = msg.raw
    if not raw:
        raise CheckError("the message bytes were not kept (MessageView.raw is empty)")
    if len(raw) <= max_size and not (msg.partial and msg.size > max_size):
        return raw
    if oversize == "skip":
        return None
    cut = raw[:max_size]
    nl = cut.rfind(b"\n")
    return cut[: nl + 1] if nl > 0 else cut


class _Conversation:
    """One request/reply exchange over a stream socket under a deadline."""

    def __init__(self, engine: str, settings: Union[SpamdSettings, RspamdSettings],
                 half_close: bool) -> None:
        self.engine = engine
        self.half_close = half_close
        self.settings = settings
        self.where = settings.socket or f"{settings.host}:{settings.port}"

    def fail(self, what: str) -> CheckError:
        """A CheckError naming the engine and its address."""
        return CheckError(f"{self.engine} {self.where}: {what}")

    def exchange(self, request: bytes,
                 complete: Optional[Callable[[bytes], bool]] = None) -> bytes:
        """Send ``request`` (then half-close when ``half_close``: spamc
        does so) and read the reply until the server closes or
        ``complete(reply so far)`` says it is whole."""
        timeout = float(self.settings.timeout)
        deadline = time.monotonic() + timeout

        def remaining() -> float:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout()
            return left

        try:
            if self.settings.socket:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                address: Union[str, tuple[Any, ...]] = self.settings.socket
            else:
                # an IP literal needs no resolver; a name is resolved by the
                # system resolver (use /etc/hosts for names: DNS is unbounded)
                flags: int = 0
                try:
                    ipaddress.ip_address(self.settings.host)
                    flags = socket.AI_NUMERICHOST
                except ValueError:
                    pass
                infos = socket.getaddrinfo(self.settings.host, self.settings.port,
                                           type=socket.SOCK_STREAM, flags=flags)
                family, _, _, _, sockaddr = infos[0]
                address = sockaddr
                sock = socket.socket(family, socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise self.fail(f"cannot resolve or open socket: {exc}") from exc
        try:
            sock.settimeout(remaining())
            sock.connect(address)
            view = memoryview(request)
            while view:
                sock.settimeout(remaining())
                sent = sock.send(view)
                view = view[sent:]
            if self.half_close:
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass  # the server may have closed already; read what it said
            chunks: list[bytes] = []
            total = 0
            while True:
                sock.settimeout(remaining())
                data = sock.recv(65536)
                if not data:
                    break
                total += len(data)
                if total > MAX_REPLY:
                    raise self.fail(f"reply larger than {MAX_REPLY} bytes")
                chunks.append(data)
                if complete is not None and complete(b"".join(chunks)):
                    break
        except socket.timeout as exc:
            raise self.fail(f"no complete reply within {timeout:g}s") from exc
        except ConnectionRefusedError as exc:
            raise self.fail("connection refused") from exc
        except FileNotFoundError as exc:
            raise self.fail("socket file not found") from exc
        except OSError as exc:
            raise self.fail(f"connection failed: {exc.strerror or exc}") from exc
        finally:
            sock.close()
        reply = b"".join(chunks)
        if not reply:
            raise self.fail("connection closed without a reply")
        return reply


# -- SpamAssassin ------------------------------------------------------------

_SPAMD_STATUS_RE = re.compile(rb"^SPAMD/(\d+\.\d+) +(\d+) +(.*)$")
_SPAM_HEADER_RE = re.compile(
    r"^\s*(true|false|yes|no)\s*;\s*(-?\d+(?:\.\d+)?)\s*/\s*(-?\d+(?:\.\d+)?)\s*$",
    re.IGNORECASE)


@dataclass(frozen=True)
class SpamdResult:
    """What spamd answered."""

    spam: bool
    score: float
    threshold: float
    symbols: tuple[str, ...] = ()
    report: str = ""


def parse_spamd_reply(reply: bytes, command: str = "SYMBOLS") -> SpamdResult:
    """Parse a spamd reply (``SPAMD/1.1 0 EX_OK``, headers, body) to
    ``command``.

    Raises ValueError with a description when the reply is garbled or an
    error status."""
    head, sep, body = reply.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = reply.partition(b"\n\n")
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    m = _SPAMD_STATUS_RE.match(lines[0])
    if not m:
        raise ValueError(f"not a spamd status line: {lines[0][:80]!r}")
    if m.group(2) != b"0":
        raise ValueError(f"spamd error {int(m.group(2))}: "
                         f"{m.group(3).decode('ascii', 'replace')[:120]}")
    spam_value: Optional[str] = None
    length: Optional[int] = None
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            raise ValueError(f"garbled header line: {line[:80]!r}")
        key = name.strip().lower()
        if key == b"spam":
            spam_value = value.decode("ascii", "replace")
        elif key == b"content-length":
            try:
                length = int(value.strip())
            except ValueError:
                raise ValueError(f"bad Content-length: {value[:40]!r}") from None
    if spam_value is None:
        raise ValueError("reply has no Spam header")
    sm = _SPAM_HEADER_RE.match(spam_value)
    if not sm:
        raise ValueError(f"garbled Spam header: {spam_value[:80]!r}")
    if length is not None and length != len(body):
        raise ValueError(f"body is {len(body)} bytes, Content-length says {length}")
    text = body.decode("utf-8", "replace")
    symbols: tuple[str, ...] = ()
    if command == "SYMBOLS":
        symbols = tuple(s.strip() for s in text.split(",") if s.strip())
    return SpamdResult(
        spam=sm.group(1).lower() in ("true", "yes"),
        score=float(sm.group(2)),
        threshold=float(sm.group(3)),
        symbols=symbols,
        report=text if command == "REPORT" else "",
    )


class SpamdCheck(Check):
    """Asks spamd (SPAMC/1.5 protocol); evidence ``spamassassin``."""

    name = "spamassassin"

    def __init__(self, settings: SpamdSettings) -> None:
        self.settings = settings
        self.on_error = settings.on_error
        self._conv = _Conversation("spamd", settings, half_close=True)

    def query(self, raw: bytes) -> SpamdResult:
        """Send ``raw`` to spamd and return its parsed answer."""
        s = self.settings
        request = (f"{s.command} SPAMC/1.5\r\nContent-length: {len(raw)}\r\n"
                   f"User: {s.user}\r\n\r\n").encode("ascii") + raw
        reply = self._conv.exchange(request)
        try:
            return parse_spamd_reply(reply, s.command)
        except ValueError as exc:
            raise self._conv.fail(f"bad reply: {exc}") from exc

    def check(self, msg: MessageView, ctx: ScanContext) -> list[Evidence]:
        payload = _payload(msg, self.settings.max_size, self.settings.oversize)
        if payload is None:
            return []
        res = self.query(payload)
        detail = f"{res.score:g}/{res.threshold:g}"
        if res.symbols:
            detail += " " + ",".join(res.symbols[:20])
        return [Evidence("spamassassin", round(res.score * self.settings.weight, 2), detail)]


# -- rspamd --------------------------------------------------------------------

class _BytesSocket:
    """Lets :class:`http.client.HTTPResponse` parse a reply we already read."""

    def __init__(self, data: bytes) -> None:
        self._file = io.BytesIO(data)

    def makefile(self, mode: str, *args: object, **kwargs: object) -> io.BytesIO:
        return self._file


@dataclass(frozen=True)
class RspamdResult:
    """What rspamd answered."""

    score: float
    required_score: float
    action: str
    symbols: tuple[tuple[str, float], ...] = ()   # (name, score), strongest first
    skipped: bool = False


def http_reply_complete(reply: bytes) -> bool:
    """True once an HTTP reply with a Content-Length has all its body (so a
    server that keeps the connection open does not cost the timeout)."""
    head, sep, body = reply.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            try:
                return len(body) >= int(value.strip())
            except ValueError:
                return True    # garbled: stop reading, the parser will complain
    return False


def parse_rspamd_reply(reply: bytes) -> RspamdResult:
    """Parse an HTTP reply of ``/checkv2``; ValueError when garbled."""
    resp = http.client.HTTPResponse(_BytesSocket(reply))  # type: ignore[arg-type]
    try:
        resp.begin()
        body = resp.read()
    except (http.client.HTTPException, OSError) as exc:
        raise ValueError(f"garbled HTTP reply: {type(exc).__name__}: {exc}") from exc
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        if resp.status != 200:
            raise ValueError(f"HTTP {resp.status} {resp.reason}") from exc
        raise ValueError(f"reply is not JSON: {body[:80]!r}") from exc
    if not isinstance(data, dict):
        raise ValueError("reply is not a JSON object")
    if resp.status != 200 or "error" in data:
        raise ValueError(f"HTTP {resp.status}: {str(data.get('error', resp.reason))[:200]}")
    try:
        score = float(data["score"])
        required = float(data.get("required_score", 0.0))
        action = str(data["action"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"reply lacks score/action: {str(data)[:120]}") from exc
    if not math.isfinite(score):
        raise ValueError(f"score is not finite: {score!r}")
    symbols: list[tuple[str, float]] = []
    raw_symbols = data.get("symbols") or {}
    if isinstance(raw_symbols, dict):
        for name, sym in raw_symbols.items():
            pts = sym.get("score", 0.0) if isinstance(sym, dict) else 0.0
            try:
                symbols.append((str(name), float(pts)))
            except (TypeError, ValueError):
                symbols.append((str(name), 0.0))
    symbols.sort(key=lambda t: (-abs(t[1]), t[0]))
    return RspamdResult(score=score, required_score=required, action=action,
                        symbols=tuple(symbols), skipped=bool(data.get("is_skipped", False)))


class RspamdCheck(Check):
    """Asks rspamd over HTTP (``POST /checkv2``); evidence ``rspamd``."""

    name = "rspamd"

    def __init__(self, settings: RspamdSettings) -> None:
        self.settings = settings
        self.on_error = settings.on_error
        self._conv = _Conversation("rspamd", settings, half_close=False)

    def _request(self, raw: bytes, ctx: Optional[ScanContext]) -> bytes:
        s = self.settings
        host = "localhost" if s.socket else s.host
        headers: list[tuple[str, str]] = [
            ("Host", host),
            ("Content-Length", str(len(raw))),
            ("Connection", "close"),
        ]
        if s.password:
            headers.append(("Password", s.password))
        if ctx is not None:
            pairs: Sequence[tuple[str, Optional[str]]] = (
                ("From", ctx.sender),
                ("IP", ctx.client_ip),
                ("User", ctx.login),
                ("Queue-Id", ctx.queue_id),
            )
            for name, value in pairs:
                v = _header_value(value)
                if v:
                    headers.append((name, v))
            for rcpt in ctx.recipients[:1024]:
                v = _header_value(rcpt)
                if v:
                    headers.append(("Rcpt", v))
        head = f"POST {s.path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
        return head.encode("utf-8") + b"\r\n" + raw

    def query(self, raw: bytes, ctx: Optional[ScanContext] = None) -> RspamdResult:
        """Send ``raw`` (with the envelope of ``ctx``) to rspamd."""
        reply = self._conv.exchange(self._request(raw, ctx), http_reply_complete)
        try:
            return parse_rspamd_reply(reply)
        except ValueError as exc:
            raise self._conv.fail(f"bad reply: {exc}") from exc

    def check(self, msg: MessageView, ctx: ScanContext) -> list[Evidence]:
        payload = _payload(msg, self.settings.max_size, self.settings.oversize)
        if payload is None:
            return []
        res = self.query(payload, ctx)
        detail = f"{res.score:g}/{res.required_score:g} {res.action}"
        named = [n for n, _ in res.symbols[:20]]
        if named:
            detail += " " + ",".join(named)
        return [Evidence("rspamd", round(res.score * self.settings.weight, 2), detail)]
