from typing import Any, Iterator

import pytest

from outpost.effects.reports import BlockEvent, ReportSettings, SmtpSettings

from .smtpsink import Sink

ORIGINAL = (b"Received: from web1 (web1 [192.0.2.10])\r\n"
            b"From: Alice <alice@shop.example>\r\n"
            b"To: bob@example.org\r\n"
            b"Subject: Cheap p\xc3\xa4lls\r\n"
            b"Message-ID: <m1@shop.example>\r\n"
            b"Date: Fri, 27 Nov 2026 10:00:00 +0000\r\n"
            b"\r\n"
            b"Buy now at http://spam.example/ \xe2\x82\xac\r\n"
            b"From the desk of nobody\r\n")


def make_settings(tmp_path, port: int = 1, **kw: Any) -> ReportSettings:
    base = dict(to="abuse@isp.example", from_addr="outpost@relay.example",
                hostname="relay.example", spool_dir=str(tmp_path / "spool"),
                smtp=SmtpSettings(host="127.0.0.1", port=port, timeout=5.0),
                retry_initial=0.05, retry_max=0.2, poll_interval=0.05)
    base.update(kw)
    return ReportSettings(**base)


def make_event(n: int = 0, **kw: Any) -> BlockEvent:
    base = dict(kind="spam", action="reject", user="webfarm", identity="alice",
                login="alice@shop.example", client_ip="192.0.2.10",
                sender="alice@shop.example", recipients=("bob@example.org", "carol@example.net"),
                queue_id=f"4Q{n:05d}", outpost_id=f"op-{n}", verdict_class="spam",
                verdict_score=12.4, evidence=("bulk_same_body (+5.00): 40 copies",),
                reason="spam score 12.4 >= 10", original=ORIGINAL,
                remedy=f"outpost quarantine release 4Q{n:05d}",
                arrival_time=1_790_000_000.0 + n)
    base.update(kw)
    return BlockEvent(**base)


@pytest.fixture
def settings(tmp_path):
    return make_settings(tmp_path)


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink()
    s.start()
    yield s
    s.stop()
