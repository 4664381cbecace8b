"""The report sender when the relay (smarthost) is down: it backs off as a
whole, with jitter, keeps the back-off across a restart, and loses nothing.
Against a real SMTP listener on 127.0.0.1 (a plain socket server that
greets, then answers 421 to MAIL FROM while "down")."""

from __future__ import annotations

import socketserver
import threading
import time

from outpost.effects.reports import ReportSender, Spool, list_items
from outpost.effects.reports.sender import JITTER

from .conftest import make_event, make_settings


class Relay(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Session)
        self.down = True
        self.sessions = 0
        self.delivered: list[bytes] = []
        self.lock = threading.Lock()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return self.server_address[1]


class _Session(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        relay: Relay = self.server  # type: ignore[assignment]
        with relay.lock:
            relay.sessions += 1
        self.wfile.write(b"220 relay.test ESMTP\r\n")
        while line := self.rfile.readline(1000):
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                self.wfile.write(b"250 relay.test\r\n")
            elif verb == b"MAIL":
                if relay.down:
                    self.wfile.write(b"421 4.3.2 smarthost down, try later\r\n")
                    return
                self.wfile.write(b"250 2.1.0 ok\r\n")
            elif verb == b"RCPT":
                self.wfile.write(b"250 2.1.5 ok\r\n")
            elif verb == b"DATA":
                self.wfile.write(b"354 go on\r\n")
                data = b"".join(iter(lambda: self.rfile.readline(100000), b".\r\n"))
                with relay.lock:
                    relay.delivered.append(data)
                self.wfile.write(b"250 2.0.0 queued\r\n")
            elif verb == b"QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 ok\r\n")


def test_relay_down_backs_off_as_a_whole_across_a_restart_and_loses_nothing(tmp_path):
    relay = Relay()
    try:
        settings = make_settings(tmp_path, port=relay.port, retry_initial=2.0, retry_max=8.0)
        spool = Spool.from_settings(settings)
        for i in range(8):
            spool.put(make_event(i, user=f"u{i}", identity=f"id{i}"))
        t0 = time.time()
        sender = ReportSender(spool, settings)
        stats = sender.run_once(now=t0)
        assert stats.reported == 8
        assert relay.sessions == 1            # one refusal stops the pass (was: one per report)
        assert stats.deferred == 1 and len(list_items(spool)) == 8
        assert sender.run_once(now=t0 + 1.0).deferred == 0 and relay.sessions == 1
        # a new sender (a reload or a crash restarted it) keeps the back-off
        restarted = ReportSender(spool, settings)
        assert restarted.run_once(now=t0 + 1.2).deferred == 0 and relay.sessions == 1
        restarted.run_once(now=t0 + 2.1)      # 2 s at most: the relay is tried again
        assert relay.sessions == 2
        assert restarted.run_once(now=t0 + 3.0).deferred == 0 and relay.sessions == 2  # now >= 3 s
        relay.down = False                     # the relay is back
        now = t0 + 100
        while len(relay.delivered) < 8 and now < t0 + 200:
            restarted.run_once(now=now)
            now += 10
        assert len(relay.delivered) == 8 and list_items(spool) == []
        assert not (tmp_path / "spool" / ".relay-backoff").exists()      # forgotten once it works
    finally:
        relay.shutdown()
        relay.server_close()


def test_back_off_is_bounded_and_jittered(tmp_path):
    settings = make_settings(tmp_path, retry_initial=30.0, retry_max=3600.0)
    sender = ReportSender(Spool.from_settings(settings), settings)
    for attempts, full in ((1, 30.0), (2, 60.0), (5, 480.0), (40, 3600.0)):
        delays = [sender._backoff(attempts) for _ in range(200)]
        assert all(full * (1 - JITTER) <= d <= full for d in delays), attempts
        assert max(delays) - min(delays) > full * JITTER / 4          # spread, not one instant
