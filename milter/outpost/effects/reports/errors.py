"""Exceptions raised by the abuse-report package."""

from __future__ import annotations


class ReportError(Exception):
    """Base class of every error raised by :mod:`outpost.effects.reports`."""


class SpoolError(ReportError):
    """The spool directory could not be read or written (permissions, disk
    full, a file that is not a spool item)."""


class SpoolItemNotFound(SpoolError):
    """No spool item has the given id (or not in the given state)."""


class SpoolItemBusy(SpoolError):
    """The item is being sent right now and cannot be changed."""


class SenderLocked(ReportError):
    """Another report sender holds ``spool_dir/.sender.lock``."""


class DeliveryError(ReportError):
    """The relay did not accept a report (connection, TLS, AUTH or SMTP
    reply).  ``permanent`` is True for a 5xx reply; ``relay`` when the relay
    itself is unavailable (no session, 421, the connection lost), not this
    report refused: the sender then backs off as a whole."""

    def __init__(self, message: str, permanent: bool = False, relay: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.relay = relay
