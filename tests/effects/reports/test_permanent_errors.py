"""A report the relay refuses with 5xx goes to failed/ at once (it would be
refused again for the whole ``give_up_after``); a 4xx stays queued.  Real
SMTP server (aiosmtpd) on loopback."""

from __future__ import annotations

import pytest

from outpost.effects.reports import ReportSender, Spool, list_items

from .conftest import make_event, make_settings
from .smtpsink import Sink


class Refusing:
    """aiosmtpd handler answering RCPT or DATA with a fixed reply."""

    def __init__(self, stage: str, reply: str) -> None:
        self.stage, self.reply = stage, reply

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802 (aiosmtpd API)
        if self.stage == "rcpt":
            return self.reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd API)
        return self.reply if self.stage == "data" else "250 2.0.0 Ok: queued"


@pytest.mark.parametrize("stage,reply,state", [
    ("rcpt", "550 5.1.1 <abuse@isp.example>: Recipient address rejected", "failed"),
    ("data", "554 5.7.1 Message refused", "failed"),
    ("rcpt", "450 4.2.0 Try again later", "queued"),
    ("data", "451 4.3.0 Local error", "queued"),
])
def test_permanent_refusal_goes_to_failed(tmp_path, stage, reply, state):
    sink = Sink()
    sink.handler = Refusing(stage, reply)
    sink.start()
    try:
        settings = make_settings(tmp_path, port=sink.port, give_up_after=3 * 86400.0)
        spool = Spool.from_settings(settings)
        rid = spool.put(make_event(1))
        stats = ReportSender(spool, settings).run_once()
    finally:
        sink.stop()
    items = list_items(spool)
    assert [(i.id, i.state) for i in items] == [(rid, state)]
    assert items[0].attempts == 1 and reply.split()[0] in items[0].last_error
    assert (stats.failed, stats.deferred) == ((1, 0) if state == "failed" else (0, 1))
