"""A strict, independent checker of RFC 5965 (ARF) reports for the tests.

Written apart from the generator (no code shared): it splits the raw bytes
itself (no ``email`` package), then checks the rules of RFC 5965 sections 2
and 3 with RFC 5322/5321 syntax for the field values.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

# RFC 5965 3.1 + registered types (RFC 5965 7.3, RFC 6591, RFC 6650)
FEEDBACK_TYPES = {"abuse", "fraud", "other", "virus", "not-spam", "auth-failure"}
REQUIRED_ONCE = ("feedback-type", "user-agent", "version")
OPTIONAL_ONCE = ("arrival-date", "incidents", "original-envelope-id", "original-mail-from",
                 "reporting-mta", "source-ip")
OPTIONAL_MANY = ("authentication-results", "original-rcpt-to", "reported-domain",
                 "reported-uri")

_FIELD_NAME = re.compile(rb"^[\x21-\x39\x3b-\x7e]+$")
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PRODUCT = re.compile(rf"^{_TOKEN}(/{_TOKEN})?(\s+{_TOKEN}(/{_TOKEN})?)*$")
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_ATOM = rf"{_ATEXT}+(\.{_ATEXT}+)*"
_QSTRING = r'"([\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"'
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN_RE = rf"{_LABEL}(\.{_LABEL})*"
_PATH = re.compile(rf"^<(({_DOT_ATOM})|({_QSTRING}))@{_DOMAIN_RE}>$")
_DOMAIN = re.compile(rf"^{_DOMAIN_RE}$")
_DATE = re.compile(
    r"^((Mon|Tue|Wed|Thu|Fri|Sat|Sun),\s+)?\d{1,2}\s+"
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)\s+\d{4}\s+"
    r"\d{2}:\d{2}(:\d{2})?\s+[+-]\d{4}$")
_MSGID = re.compile(rf"^<{_DOT_ATOM}@({_DOT_ATOM}|\[[^\]]*\])>$")


class ArfError(AssertionError):
    """The report breaks one or more rules (all listed)."""


@dataclass
class Part:
    headers: list[tuple[str, str]]
    body: bytes

    def get(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    @property
    def content_type(self) -> str:
        values = self.get("content-type")
        return values[0].split(";")[0].strip().lower() if values else "text/plain"


@dataclass
class Report:
    headers: list[tuple[str, str]]
    parts: list[Part]
    fields: dict[str, list[str]] = field(default_factory=dict)

    def get(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


def _parse_headers(block: bytes, where: str, errors: list[str]) -> list[tuple[str, str]]:
    headers: list[list[bytes]] = []
    for line in block.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            if not headers:
                errors.append(f"{where}: continuation line before any field")
                continue
            headers[-1][1] += b"\r\n" + line
            continue
        name, sep, value = line.partition(b":")
        if not sep or not _FIELD_NAME.match(name):
            errors.append(f"{where}: malformed header line {line[:60]!r}")
            continue
        headers.append([name, value])
    out = []
    for name, value in headers:
        text = value.decode("utf-8", "replace").replace("\r\n", "")
        out.append((name.decode("ascii"), text.strip()))
    return out


def _param(value: str, name: str) -> str | None:
    m = re.search(rf';\s*{name}\s*=\s*("([^"]*)"|[^;\s]+)', value, re.I)
    if not m:
        return None
    return m.group(2) if m.group(2) is not None else m.group(1)


def _split(data: bytes, where: str, errors: list[str]) -> tuple[bytes, bytes]:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        if data.startswith(b"\r\n"):
            return b"", data[2:]
        errors.append(f"{where}: no blank line after the header")
    return head, body


def check(data: bytes) -> Report:
    """Check one report; returns its structure or raises ArfError."""
    errors: list[str] = []
    if re.search(rb"(?<!\r)\n|\r(?!\n)", data):
        errors.append("bare CR or LF (lines must end in CRLF)")
    if any(len(line) > 998 for line in data.split(b"\r\n")):
        errors.append("line longer than 998 octets")
    if b"\0" in data:
        errors.append("NUL byte")
    head, body = _split(data, "message", errors)
    headers = _parse_headers(head, "message", errors)
    report = Report(headers=headers, parts=[])

    for name in ("from", "date", "message-id", "to", "subject", "mime-version",
                 "content-type", "auto-submitted"):
        n = len(report.get(name))
        if n != 1:
            errors.append(f"top-level {name}: {n} times, expected once")
    if report.get("mime-version") and report.get("mime-version")[0] != "1.0":
        errors.append("MIME-Version is not 1.0")
    if report.get("auto-submitted") and report.get("auto-submitted")[0].lower() != "auto-generated":
        errors.append("Auto-Submitted is not auto-generated")
    if report.get("date") and not _DATE.match(report.get("date")[0]):
        errors.append(f"Date {report.get('date')[0]!r} is not an RFC 5322 date-time")
    if report.get("message-id") and not _MSGID.match(report.get("message-id")[0]):
        errors.append(f"Message-ID {report.get('message-id')[0]!r} malformed")
    ctype = report.get("content-type")[0] if report.get("content-type") else ""
    if ctype.split(";")[0].strip().lower() != "multipart/report":
        errors.append(f"top-level Content-Type {ctype!r} is not multipart/report")
    rtype = _param(ctype, "report-type")
    if (rtype or "").lower() != "feedback-report":
        errors.append(f"report-type is {rtype!r}, not feedback-report")
    boundary = _param(ctype, "boundary")
    if not boundary:
        errors.append("no boundary")
        raise ArfError("; ".join(errors))

    delim = b"\r\n--" + boundary.encode("ascii")
    chunks = (b"\r\n" + body).split(delim)
    if len(chunks) < 2:
        raise ArfError("; ".join(errors + ["boundary never used"]))
    last = chunks[-1]
    if not last.startswith(b"--"):
        errors.append("no closing boundary delimiter")
    for i, chunk in enumerate(chunks[1:-1], 1):
        # after the delimiter: optional whitespace then CRLF
        line_end = chunk.find(b"\r\n")
        if line_end < 0 or chunk[:line_end].strip(b" \t"):
            errors.append(f"part {i}: junk after the boundary")
            continue
        phead, pbody = _split(chunk[line_end + 2:], f"part {i}", errors)
        report.parts.append(Part(_parse_headers(phead, f"part {i}", errors), pbody))

    if len(report.parts) != 3:
        errors.append(f"{len(report.parts)} parts, expected 3")
    else:
        first, second, third = report.parts
        if not first.content_type.startswith("text/"):
            errors.append(f"part 1 is {first.content_type}, not human-readable text")
        if second.content_type != "message/feedback-report":
            errors.append(f"part 2 is {second.content_type}, not message/feedback-report")
        cte = (second.get("content-transfer-encoding") or ["7bit"])[0].lower()
        if cte not in ("7bit", "8bit"):
            errors.append(f"part 2 uses {cte} encoding")
        if third.content_type not in ("message/rfc822", "text/rfc822-headers"):
            errors.append(f"part 3 is {third.content_type}")
        cte3 = (third.get("content-transfer-encoding") or ["7bit"])[0].lower()
        if third.content_type == "message/rfc822" and cte3 not in ("7bit", "8bit", "binary"):
            errors.append(f"message/rfc822 part with {cte3} encoding (RFC 2046 5.2.1)")
        report.fields = _check_fields(second.body, errors)
    if errors:
        raise ArfError("; ".join(errors))
    return report


def _check_fields(body: bytes, errors: list[str]) -> dict[str, list[str]]:
    if not body.isascii():
        errors.append("feedback-report part is not ASCII")
    block = body.split(b"\r\n\r\n")[0]
    fields: dict[str, list[str]] = {}
    for name, value in _parse_headers(block, "feedback-report", errors):
        fields.setdefault(name.lower(), []).append(value)
    for name in REQUIRED_ONCE:
        if len(fields.get(name, [])) != 1:
            errors.append(f"{name}: {len(fields.get(name, []))} times, required once")
    for name in OPTIONAL_ONCE:
        if len(fields.get(name, [])) > 1:
            errors.append(f"{name}: {len(fields[name])} times, at most once")

    def each(name: str, ok, what: str) -> None:
        for value in fields.get(name, []):
            if not ok(value):
                errors.append(f"{name}: {value!r} is not {what}")

    each("feedback-type", lambda v: v.lower() in FEEDBACK_TYPES, "a registered feedback type")
    each("user-agent", lambda v: bool(_PRODUCT.match(v)), "a product token list")
    each("version", lambda v: v == "1", "1")
    each("arrival-date", lambda v: bool(_DATE.match(v)), "an RFC 5322 date-time")
    each("incidents", lambda v: v.isdigit() and int(v) < 2 ** 32, "a 32-bit count")
    each("original-mail-from", lambda v: v == "<>" or bool(_PATH.match(v)), "a reverse-path")
    each("original-rcpt-to", lambda v: bool(_PATH.match(v)), "a forward-path")
    each("reported-domain", lambda v: bool(_DOMAIN.match(v)), "a domain")

    def mta(v: str) -> bool:
        kind, sep, name = v.partition(";")
        return bool(sep) and kind.strip().lower() == "dns" and bool(_DOMAIN.match(name.strip()))

    each("reporting-mta", mta, "'dns; <host name>'")

    def ip(v: str) -> bool:
        try:
            ipaddress.ip_address(v[5:] if v.startswith("IPv6:") else v)
        except ValueError:
            return False
        return True

    each("source-ip", ip, "an IP address")
    return fields
