"""Spool and sender against a real SMTP server (aiosmtpd) on loopback."""

import email
import email.policy
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from outpost.effects.reports import (
    ReportSender,
    SenderLocked,
    Spool,
    SpoolError,
    SpoolItemBusy,
    SpoolItemNotFound,
    list_items,
    purge,
    retry,
)

from .arfcheck import check
from .conftest import ORIGINAL, make_event, make_settings
from .smtpsink import Sink

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def drain(sender, sink, expected, timeout=15.0):
    """Run passes until the sink has ``expected`` mails (bounded)."""
    deadline = time.monotonic() + timeout
    while len(sink.received) < expected and time.monotonic() < deadline:
        sender.run_once()
        time.sleep(0.02)
    return sink.received


def message_ids(received):
    return [r.message_id for r in received]


def test_put_writes_atomically_and_trims(tmp_path):
    settings = make_settings(tmp_path, max_body_size=2048)
    spool = Spool.from_settings(settings)
    big = ORIGINAL + b"x" * 70 * 1000
    item = spool.put(make_event(1, original=big))
    path = spool.dir("new", f"{item}.evt")
    event, trimmed = spool.read_event(path)
    assert "larger than max_body_size" in trimmed
    assert event.original == ORIGINAL.split(b"\r\n\r\n")[0] + b"\r\n"
    assert os.listdir(spool.dir("tmp")) == []
    assert oct(os.stat(path).st_mode & 0o777) == "0o640"
    # limit events only with on_limit, reports about reports never
    assert spool.put(make_event(2, kind="limit", action="tempfail")) is None
    on = Spool(settings.spool_dir, make_settings(tmp_path, on_limit=True))
    assert on.put(make_event(2, kind="limit", action="tempfail")) is not None


def _put_many(spool_dir, start, count):
    spool = Spool(spool_dir)
    for i in range(start, start + count):
        spool.put(make_event(i, identity=f"id{i % 7}"))


def test_concurrent_put_from_processes(tmp_path):
    spool = Spool(str(tmp_path / "spool"))
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_put_many, args=(spool.path, n * 50, 50)) for n in range(4)]
    threads = [threading.Thread(target=_put_many, args=(spool.path, 1000 + n * 25, 25))
               for n in range(2)]
    for p in procs:
        p.start()
    for t in threads:
        t.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    for t in threads:
        t.join(30)
    files = spool.files("new", ext=".evt")
    assert len(files) == 250
    queue_ids = {spool.read_event(f)[0].queue_id for f in files}
    assert len(queue_ids) == 250


def test_relay_down_then_back(tmp_path):
    sink = Sink()
    settings = make_settings(tmp_path, port=sink.port)
    spool = Spool.from_settings(settings)
    sender = ReportSender(spool, settings)
    for i in range(5):
        spool.put(make_event(i, identity=f"user{i}"))
    stats = sender.run_once()
    assert stats.reported == 5 and stats.sent == 0 and stats.deferred == 1
    items = list_items(spool)
    assert [i.state for i in items] == ["queued"] * 5
    assert sum(i.attempts for i in items) == 1
    assert any("connect 127.0.0.1" in i.last_error for i in items)
    for _ in range(5):   # still down: nothing lost, nothing sent
        time.sleep(0.06)
        sender.run_once()
    assert len(list_items(spool)) == 5
    sink.start()
    try:
        received = drain(sender, sink, 5)
        for _ in range(5):
            sender.run_once()
        received = sink.received
    finally:
        sink.stop()
    ids = message_ids(received)
    assert len(ids) == 5 and len(set(ids)) == 5
    assert list_items(spool) == []
    for r in received:
        assert r.rcpt_tos == ["abuse@isp.example"] and r.mail_from == "outpost@relay.example"
        check(r.data)
        assert ORIGINAL in r.data      # 8-bit original arrived byte for byte


SENDER_SCRIPT = textwrap.dedent("""
    import threading
    from tests.effects.reports.conftest import make_settings
    from outpost.effects.reports import ReportSender, Spool
    import pathlib
    settings = make_settings(pathlib.Path({tmp!r}), port={port})
    print("ready", flush=True)
    ReportSender(Spool.from_settings(settings), settings).run_forever(threading.Event())
""")


def test_sender_killed_mid_way_loses_nothing(tmp_path):
    sink = Sink(delay=0.4)
    sink.start()
    try:
        settings = make_settings(tmp_path, port=sink.port)
        spool = Spool.from_settings(settings)
        for i in range(6):
            spool.put(make_event(i, identity=f"user{i}"))
        script = SENDER_SCRIPT.format(tmp=str(tmp_path), port=sink.port)
        # cwd: "-c" puts the current directory on sys.path, so tests.… resolves there
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=ROOT)
        try:
            assert proc.stdout.readline().strip() == b"ready"
            deadline = time.monotonic() + 15
            while len(sink.received) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            sink.handler.data_started.clear()
            assert sink.handler.data_started.wait(5)   # the 3rd is in DATA now
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(10)
        assert 2 <= len(sink.received) < 6
        assert len(spool.files("sending", ext=".rpt")) == 1   # caught in the transaction
        sink.wait_idle()   # the relay is done with the orphaned transaction
        sender = ReportSender(spool, settings)
        stats = sender.run_once()
        assert stats.recovered == 1
        drain(sender, sink, 6)
        sender.run_once()
        ids = message_ids(sink.received)
    finally:
        sink.stop()
    assert len(set(ids)) == 6                 # every report arrived
    assert len(ids) - len(set(ids)) <= 1      # at most the in-flight one twice
    assert list_items(spool) == []


def test_storm_is_rate_limited_and_aggregated(tmp_path, sink):
    settings = make_settings(tmp_path, port=sink.port, max_per_hour=10, window=3600.0)
    spool = Spool.from_settings(settings)
    sender = ReportSender(spool, settings)
    t0 = time.time()
    for i in range(100):
        spool.put(make_event(i, arrival_time=t0 + i * 0.5))
    spool.put(make_event(999, identity="bob", sender="bob@shop.example"))
    stats = sender.run_once(now=t0 + 60)
    assert (stats.reported, stats.held, stats.sent) == (11, 90, 11)
    for k in range(10):     # more passes within the hour: nothing more goes out
        assert sender.run_once(now=t0 + 120 + k * 60).sent == 0
    assert len(sink.received) == 11
    held = [i for i in list_items(spool) if i.state == "held"]
    assert len(held) == 90 and {i.identity for i in held} == {"webfarm/alice"}
    # the hour is over: ONE aggregated report for the 90 folded incidents
    stats = sender.run_once(now=t0 + 60 + 3601)
    assert (stats.aggregated, stats.folded, stats.sent) == (1, 90, 1)
    assert sender.run_once(now=t0 + 60 + 3700).sent == 0
    received = sink.received
    assert len(received) == 12 and len(set(message_ids(received))) == 12
    singles = [r for r in received if b"Incidents:" not in r.data]
    assert len(singles) == 11
    agg = check(received[-1].data)
    assert agg.fields["incidents"] == ["90"]
    text = email.message_from_bytes(received[-1].data, policy=email.policy.default) \
        .get_payload()[0].get_content()
    folded_ids = [f"4Q{i:05d}" for i in range(10, 100)]
    assert all(q in text for q in folded_ids)
    assert not any(f"4Q{i:05d} " in text for i in range(10))
    assert list_items(spool) == []


def test_spam_dressed_as_a_report_is_spooled_and_reported(tmp_path, sink):
    """#14.6: a blocked message whose Content-Type says it is a feedback
    report is still reported (content never decides that)."""
    settings = make_settings(tmp_path, port=sink.port)
    spool = Spool.from_settings(settings)
    sender = ReportSender(spool, settings)
    spool.put(make_event(1))
    drain(sender, sink, 1)
    report = sink.received[0].data
    assert spool.put(make_event(2, original=report)) is not None
    assert spool.put(make_event(3, original=report.split(b"\r\n\r\n")[0])) is not None
    drain(sender, sink, 3)
    assert len(sink.received) == 3
    assert [check(r.data).fields["feedback-type"] for r in sink.received] == [["abuse"]] * 3


def test_one_sender_per_spool(tmp_path, sink):
    settings = make_settings(tmp_path, port=sink.port)
    spool = Spool.from_settings(settings)
    first = ReportSender(spool, settings)
    stop = threading.Event()
    t = threading.Thread(target=first.run_forever, args=(stop,))
    t.start()
    try:
        deadline = time.monotonic() + 5
        spool.put(make_event(1))
        while not sink.received and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(sink.received) == 1
        with pytest.raises(SenderLocked):
            ReportSender(Spool.from_settings(settings), settings).run_once()
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive()
    ReportSender(spool, settings).run_once()   # the lock is free again


def test_cli_list_retry_purge_and_give_up(tmp_path):
    sink = Sink()
    settings = make_settings(tmp_path, port=sink.port, retry_initial=60, retry_max=600,
                             give_up_after=100)
    spool = Spool.from_settings(settings)
    sender = ReportSender(spool, settings)
    a = spool.put(make_event(1, identity="a"))
    b = spool.put(make_event(2, identity="b"))
    t0 = time.time()
    sender.run_once(now=t0)
    items = {i.id: i for i in list_items(spool)}
    assert items[a].state == "queued" and items[a].attempts == 1
    assert items[a].next_attempt == pytest.approx(t0 + 60)
    assert "connect" in items[a].last_error
    assert items[b].attempts == 0
    # past give_up_after: a fails its attempt, b (never tried, relay down) expires
    assert sender.run_once(now=t0 + 200).failed == 2
    assert {i.state for i in list_items(spool)} == {"failed"}
    assert retry(spool, a) == 1
    item = [i for i in list_items(spool) if i.id == a][0]
    assert item.state == "queued" and item.attempts == 0
    with pytest.raises(SpoolItemNotFound):
        retry(spool, "nope")
    assert purge(spool) == 1                          # the failed one (b)
    assert [i.id for i in list_items(spool)] == [a]
    sink.start()
    try:
        drain(sender, sink, 1)     # retry() also lifted the relay back-off
    finally:
        sink.stop()
    assert len(sink.received) == 1 and list_items(spool) == []
    c = spool.put(make_event(3))
    assert purge(spool, c) == 1 and list_items(spool) == []


def test_corrupt_event_is_moved_aside(tmp_path, sink):
    settings = make_settings(tmp_path, port=sink.port)
    spool = Spool.from_settings(settings)
    with open(spool.dir("new", "0000000000000000001-1-bad.evt"), "wb") as fh:
        fh.write(b"OUTPOST-EVENT 1\n{not json\n")
    spool.put(make_event(1))
    stats = ReportSender(spool, settings).run_once()
    assert stats.corrupt == 1 and stats.sent == 1
    items = list_items(spool)
    assert len(items) == 1 and items[0].state == "failed" and "unreadable" in items[0].last_error


def test_busy_and_unretryable_items(tmp_path):
    settings = make_settings(tmp_path)          # port 1: the relay refuses
    spool = Spool.from_settings(settings)
    a = spool.put(make_event(1))
    with pytest.raises(SpoolError, match="only queued or failed"):
        retry(spool, a)
    ReportSender(spool, settings).run_once()
    assert [i.state for i in list_items(spool)] == ["queued"]
    os.rename(spool.dir("queue", f"{a}.rpt"), spool.dir("sending", f"{a}.rpt"))
    with pytest.raises(SpoolItemBusy):
        purge(spool, a)
    with pytest.raises(ValueError):
        purge(spool, None, state="sending")


def test_crash_leftovers_are_finished_once(tmp_path, sink):
    """State a crashed sender may leave: an event whose report is already
    queued, and a half-done fold in folding/."""
    settings = make_settings(tmp_path, port=sink.port)
    spool = Spool.from_settings(settings)
    sender = ReportSender(spool, settings)
    # 1. the report was queued but the event not yet removed: no second report
    b = spool.put(make_event(2, identity="bob"))
    evt = open(spool.dir("new", f"{b}.evt"), "rb").read()
    spool.write_report("queue", b, {"id": b, "identity": "webfarm/bob", "kind": "spam",
                                   "next_attempt": 0, "since": time.time(),
                                   "from": "o@relay.example", "to": "abuse@isp.example",
                                   "message_id": "<dup@x>"},
                       b"Message-ID: <dup@x>\r\n\r\nx\r\n")
    stats = sender.run_once()
    assert (stats.ingested, stats.reported, stats.sent) == (1, 0, 1)
    assert message_ids(sink.received) == ["<dup@x>"]
    # 2. a fold interrupted after the batch was moved to folding/
    os.makedirs(spool.dir("folding", "batch1"))
    for i in range(3):
        with open(spool.dir("folding", "batch1", f"{i:019d}-1-aa.evt"), "wb") as fh:
            fh.write(evt.replace(b'"4Q00002"', f'"4QF{i}"'.encode()))
    stats = sender.run_once()
    assert (stats.aggregated, stats.folded, stats.sent) == (1, 3, 1)
    last = check(sink.received[-1].data)
    assert last.fields["incidents"] == ["3"]
    assert b"4QF0" in sink.received[-1].data and b"4QF2" in sink.received[-1].data
    assert sender.run_once().sent == 0 and list_items(spool) == []


def _self_signed(tmp_path):
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    crt, pem = tmp_path / "relay.crt", tmp_path / "relay.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return str(crt), str(pem)


def test_starttls_and_auth(tmp_path):
    import ssl

    from aiosmtpd.smtp import AuthResult

    from outpost.effects.reports import SmtpSettings
    crt, key = _self_signed(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(crt, key)
    logins = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        logins.append((mechanism, auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.password == b"s3cret", handled=False)

    sink = Sink(tls_context=ctx, require_starttls=True, authenticator=authenticator,
                auth_required=True, auth_require_tls=True)
    pw = tmp_path / "pw"
    pw.write_text("wrong\n")
    os.chmod(pw, 0o600)
    smtp = SmtpSettings(host="127.0.0.1", port=sink.port, starttls=True, username="outpost",
                        password_file=str(pw), tls_ca_file=crt, timeout=5.0)
    settings = make_settings(tmp_path, port=sink.port, smtp=smtp)
    spool = Spool.from_settings(settings)
    spool.put(make_event(1))
    sink.start()
    try:
        sender = ReportSender(spool, settings)
        assert sender.run_once().deferred == 1         # wrong password: kept, retried
        assert "535" in list_items(spool)[0].last_error
        pw.write_text("s3cret\n")
        retry(spool)
        drain(sender, sink, 1)
    finally:
        sink.stop()
    assert len(sink.received) == 1 and list_items(spool) == []
    assert logins[-1][1:] == (b"outpost", b"s3cret")
    with pytest.raises(ValueError, match="starttls"):
        SmtpSettings(host="relay.example", username="u", password_file=str(pw))
