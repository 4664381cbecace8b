"""Types shared by the spam checks and the scoring engine."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class Evidence:
    """One check's contribution: a short name (``bulk_same_body``), its
    points (positive: spammy) and a detail for logs and ``outpost scan``."""

    name: str
    points: float
    detail: str = ""


@dataclass(frozen=True)
class Url:
    href: str              # as written (bounded length)
    host: str              # lower-case host name or IP literal, '' if none
    text: str = ""         # anchor text for HTML links, '' otherwise


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    size: int
    sha256: str
    members: tuple[str, ...] = ()   # file names inside a zip/OOXML attachment (bounded)


@dataclass(frozen=True)
class MessageView:
    """A bounded, normalised view of one message (what the checks read).

    Only the first ``max_scan`` bytes are parsed; ``partial`` tells that the
    message was larger.  ``raw`` holds those bytes for external engines.
    """

    headers: tuple[tuple[str, str], ...]   # (name, decoded value) in order
    text: str                              # plain text of all text parts, html converted
    html: str                              # raw html of html parts (bounded), '' if none
    urls: tuple[Url, ...]
    attachments: tuple[Attachment, ...]
    size: int                              # full message size in bytes
    partial: bool
    raw: bytes = b""
    #: The engine's content cache key (``Engine.content_key``), b"" if none.
    content_key: bytes = field(default=b"", compare=False, repr=False)

    def header(self, name: str) -> Optional[str]:
        """First value of a header (case-insensitive), or None."""
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]


@dataclass(frozen=True)
class ScanContext:
    """Who sends the message, as mapped by the policy core."""

    user: str
    identity: str
    sender: str                         # envelope sender ('' for <>)
    recipients: tuple[str, ...] = ()
    client_ip: Optional[str] = None
    login: Optional[str] = None
    queue_id: Optional[str] = None


class CheckError(Exception):
    """A check could not run (engine down, timeout); the engine applies the
    check's failure policy."""


class Check(abc.ABC):
    """A scoring check.  ``name`` is its config key; ``check`` returns zero or
    more pieces of evidence.  Checks must bound their own time."""

    name: str = ""
    #: True when the result depends on nothing but the parsed body (text,
    #: html, urls, attachments), the names of the header fields and whether
    #: each is empty, and the values of the fields named in ``reads_headers``
    #: (lower case): never on the envelope (``ctx``), the sender's counts, a
    #: store or the network.  The engine then reuses the result for an
    #: identical message (:class:`outpost.spam.engine.ContentCache`).
    content_only: bool = False
    reads_headers: frozenset[str] = frozenset()

    @abc.abstractmethod
    def check(self, msg: MessageView, ctx: ScanContext) -> list[Evidence]:
        ...

    def close(self) -> None:  # noqa: B027 - an optional hook: checks without resources keep it
        pass
