"""Abuse reports (ARF, RFC 5965) about blocked mail and locked identities.

Milter workers call :meth:`Spool.put` with a :class:`BlockEvent`; one
:class:`ReportSender` per host renders, rate-limits, aggregates and delivers
the reports over SMTP.  See docs/configuration.rst, "Abuse reports".
"""

from .arf import RenderedReport, render_report
from .errors import DeliveryError, ReportError, SenderLocked, SpoolError, SpoolItemBusy, SpoolItemNotFound
from .event import ACTIONS, BlockEvent
from .sender import ReportSender, SendStats
from .settings import ReportSettings, SmtpSettings
from .spool import Spool, SpoolItem, list_items, overflow_counts, purge, retry

__all__ = [
    "ACTIONS", "BlockEvent", "DeliveryError", "RenderedReport", "ReportError",
    "ReportSender", "ReportSettings", "SendStats", "SenderLocked", "SmtpSettings", "SpoolError", "SpoolItemBusy",
    "SpoolItemNotFound", "Spool", "SpoolItem", "list_items", "overflow_counts",
    "purge", "render_report", "retry",
]
