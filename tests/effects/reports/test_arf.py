"""The report format: stdlib email parser, the strict checker, parsedmarc."""

import dataclasses
import email
import email.policy
from email.utils import parsedate_to_datetime

import parsedmarc
import pytest

from outpost import __version__
from outpost.effects.reports import ReportSettings, render_report
from outpost.effects.reports.arf import smtp_path, source_ip, split_original

from .arfcheck import ArfError, check
from .conftest import ORIGINAL, make_event, make_settings


def parse(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)


def text_part(msg) -> str:
    return msg.get_payload()[0].get_content()


def test_spam_report_parses_with_email_package(settings):
    ev = make_event(7)
    rep = render_report(ev, settings)
    msg = parse(rep.data)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "feedback-report"
    assert [p.get_content_type() for p in msg.get_payload()] == [
        "text/plain", "message/feedback-report", "message/rfc822"]
    assert msg["To"] == "abuse@isp.example"
    assert msg["From"] == "outpost@relay.example"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["Subject"] == "[Outpost] spam rejected from webfarm/alice (12.4)"
    assert msg["Message-ID"] == rep.message_id
    assert not msg.defects
    fb = msg.get_payload()[1].get_payload()[0]
    assert fb["Feedback-Type"] == "abuse"
    assert fb["User-Agent"] == f"Outpost/{__version__}"
    assert fb["Version"] == "1"
    assert fb["Original-Mail-From"] == "<alice@shop.example>"
    assert fb.get_all("Original-Rcpt-To") == ["<bob@example.org>", "<carol@example.net>"]
    assert parsedate_to_datetime(fb["Arrival-Date"]).timestamp() == ev.arrival_time
    assert fb["Source-IP"] == "192.0.2.10"
    assert fb["Reported-Domain"] == "shop.example"
    assert fb["Reporting-MTA"] == "dns; relay.example"
    assert fb["Incidents"] is None
    text = text_part(msg)
    for needle in ("webfarm", "alice@shop.example", "192.0.2.10", "score 12.40",
                   "bulk_same_body (+5.00): 40 copies", "4Q00007", "op-7",
                   "outpost quarantine release 4Q00007", "rejected"):
        assert needle in text, needle
    # the original travels byte for byte (8-bit, a "From " line unmangled)
    assert ORIGINAL in rep.data
    assert rep.eightbit and rep.original_part == "message/rfc822"
    inner = msg.get_payload()[2].get_payload()[0]
    assert inner["Message-ID"] == "<m1@shop.example>"


def test_spam_report_passes_strict_checker(settings):
    ev = make_event(3)
    rep = render_report(ev, settings)
    r = check(rep.data)
    assert r.fields["feedback-type"] == ["abuse"]
    assert r.fields["original-rcpt-to"] == ["<bob@example.org>", "<carol@example.net>"]
    assert r.fields["source-ip"] == ["192.0.2.10"]
    assert r.parts[2].content_type == "message/rfc822"
    assert r.parts[2].body.rstrip(b"\r\n") == ORIGINAL.rstrip(b"\r\n")


def test_parsedmarc_reads_the_report(settings):
    ev = make_event(5, client_ip="2001:db8::25")
    rep = render_report(ev, settings)
    parsed = parsedmarc.parse_report_email(rep.data, offline=True, always_use_local_files=True)
    assert parsed["report_type"] == "failure"
    r = parsed["report"]
    assert r["feedback_type"] == "abuse"
    assert r["user_agent"] == f"Outpost/{__version__}"
    assert r["version"] == "1"
    assert r["original_mail_from"] == "<alice@shop.example>"
    assert r["original_rcpt_to"] in ("<bob@example.org>", "<carol@example.net>")
    assert r["reported_domain"] == "shop.example"
    assert r["reporting_mta"] == "dns; relay.example"
    assert r["source"]["ip_address"] == "2001:db8::25"
    assert parsedate_to_datetime(r["arrival_date"]).timestamp() == ev.arrival_time
    assert r["sample_headers_only"] is False
    assert r["parsed_sample"]["subject"] == "Cheap p\u00e4lls"
    assert r["parsed_sample"]["from"]["address"] == "alice@shop.example"


def test_lock_report(settings):
    ev = make_event(1, kind="lock", action="lock", lock_until=1_790_003_600.0,
                    reason="5 spam messages in 10 minutes", remedy="outpost unlock webfarm/alice",
                    verdict_score=None, verdict_class=None, queue_id=None)
    rep = render_report(ev, settings)
    r = check(rep.data)
    assert r.fields["feedback-type"] == ["other"]
    msg = parse(rep.data)
    assert msg["Subject"].startswith("[Outpost] identity webfarm/alice locked until 2026-")
    text = text_part(msg)
    assert ("Identity webfarm/alice locked until 2026-09-21 15:13:20 UTC because "
            "5 spam messages in 10 minutes.") in text
    assert "outpost unlock webfarm/alice" in text
    perm = render_report(dataclasses.replace(ev, lock_until=None), settings)
    assert "locked permanently because" in text_part(parse(perm.data))


@pytest.mark.parametrize("case", ["no_body_setting", "too_big", "long_line", "nul"])
def test_headers_only(tmp_path, case):
    settings = make_settings(tmp_path, include_body=(case != "no_body_setting"),
                             max_body_size=4096)
    original = ORIGINAL
    if case == "too_big":
        original = ORIGINAL + (b"y" * 70 + b"\r\n") * 100
    elif case == "long_line":
        original = ORIGINAL + b"z" * 2000 + b"\r\n"
    elif case == "nul":
        original = ORIGINAL + b"a\0b\r\n"
    rep = render_report(make_event(2, original=original), settings)
    r = check(rep.data)
    assert r.parts[2].content_type == "text/rfc822-headers"
    assert rep.original_part == "text/rfc822-headers"
    head = split_original(ORIGINAL)[0]
    msg = parse(rep.data)
    assert msg.get_payload()[2].get_payload(decode=True).replace(b"\n", b"\r\n").replace(
        b"\r\r\n", b"\r\n") == head
    assert b"Buy now" not in rep.data
    assert "Only the message header is attached" in text_part(msg)


def test_huge_header_is_bounded_and_encoded(tmp_path):
    settings = make_settings(tmp_path, max_body_size=64 * 1024)
    original = b"X-Big: " + b"a" * 100_000 + b"\r\nFrom: x@shop.example\r\n\r\nbody\r\n"
    rep = render_report(make_event(1, original=original), settings)
    r = check(rep.data)   # no line over 998 octets although the header has 100 KB
    assert r.parts[2].content_type == "text/rfc822-headers"
    assert len(rep.data) < 80 * 1024


def test_header_injection_is_neutralised(settings):
    ev = make_event(1, identity="alice\r\nBcc: victim@evil.example", login="a\nX-Evil: 1",
                    sender="alice@shop.example\r\nX-Injected: yes",
                    recipients=("bob@example.org\r\nX-More: 1", "\0carol@example.net"),
                    queue_id="Q1\r\nX-Q: 1", outpost_id="id\0x", reason="r\r\nX-R: 1")
    rep = render_report(ev, settings)
    r = check(rep.data)
    names = {k.lower() for k, _ in r.headers}
    assert "bcc" not in names and "x-injected" not in names
    for part in r.parts[:2]:
        assert not any(k.lower().startswith("x-") for k, _ in part.headers)
    assert set(r.fields) <= {"feedback-type", "user-agent", "version", "original-mail-from",
                             "original-rcpt-to", "arrival-date", "source-ip", "reported-domain",
                             "reporting-mta", "incidents"}
    assert b"\r\nBcc:" not in rep.data and b"\nX-Evil" not in rep.data
    assert b"\r\nX-Injected" not in rep.data and b"\0" not in rep.data
    assert parse(rep.data)["To"] == "abuse@isp.example"


def test_recipient_is_never_taken_from_the_message(settings):
    original = (b"From: spammer@evil.example\r\nReply-To: victim@example.org\r\n"
                b"X-Report-Abuse-To: victim@example.org\r\nTo: x@example.org\r\n\r\nhi\r\n")
    rep = render_report(make_event(1, original=original, sender="victim@example.org"), settings)
    assert parse(rep.data)["To"] == "abuse@isp.example" and rep.to == "abuse@isp.example"
    own = render_report(make_event(1, report_to="abuse@webfarm.example"), settings)
    assert parse(own.data)["To"] == "abuse@webfarm.example"


def test_many_recipients_are_bounded(tmp_path):
    settings = make_settings(tmp_path, max_list=20)
    rcpts = tuple(f"r{i}@example.org" for i in range(5000))
    rep = render_report(make_event(1, recipients=rcpts), settings)
    r = check(rep.data)
    assert len(r.fields["original-rcpt-to"]) == 20
    assert "... and 4980 more" in text_part(parse(rep.data))
    assert len(rep.data) < 20_000


def test_odd_addresses_and_clients(settings):
    ev = make_event(1, sender="", client_ip="unknown", recipients=('"a b"@example.org',),
                    reported_domain="")
    r = check(render_report(ev, settings).data)
    assert r.fields["original-mail-from"] == ["<>"]
    assert r.fields["original-rcpt-to"] == ['<"a b"@example.org>']
    assert "source-ip" not in r.fields and "reported-domain" not in r.fields
    ev = make_event(1, sender="j\u00f6rg@b\u00fccher.example", client_ip="::ffff:198.51.100.4",
                    recipients=("\u00e9@example.org",), original=None)
    rep = render_report(ev, settings)
    r = check(rep.data)
    assert "original-mail-from" not in r.fields and "original-rcpt-to" not in r.fields
    assert r.fields["source-ip"] == ["198.51.100.4"]
    assert r.parts[2].content_type == "text/rfc822-headers"
    assert smtp_path("<a@b.example>") == "<a@b.example>" and smtp_path("a@-bad") is None
    assert source_ip("[IPv6:2001:db8::1]") == "2001:db8::1" and source_ip("/run/sock") is None


def test_original_without_final_crlf_and_bare_lf(settings):
    original = b"From: a@shop.example\nSubject: x\n\nline1\nline2"
    rep = render_report(make_event(1, original=original), settings)
    r = check(rep.data)
    assert r.parts[2].body.startswith(b"From: a@shop.example\r\nSubject: x\r\n\r\nline1\r\nline2")


def test_aggregated_report_has_incidents_and_queue_ids(settings):
    events = [make_event(i) for i in range(30)]
    rep = render_report(events[-1], settings, folded=events)
    r = check(rep.data)
    assert r.fields["incidents"] == ["30"]
    assert rep.incidents == 30
    text = text_part(parse(rep.data))
    assert all(f"4Q{i:05d}" in text for i in range(30))
    assert parse(rep.data)["Subject"].startswith("[Outpost] 30 incidents: spam rejected")


def test_content_type_does_not_make_a_report_unreportable(settings):
    """#14.6: what the original says about itself (``multipart/report;
    report-type=feedback-report``) does not make it "one of our reports":
    a blocked message is reported whatever its Content-Type (our own reports
    are recognised by origin, in the policy)."""
    first = render_report(make_event(1), settings)
    other_arf = (b"From: fbl@mailbox.example\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report;"
                 b"\r\n report-type=Feedback-Report; boundary=x\r\n\r\n--x--\r\n")
    for original in (first.data, split_original(first.data)[0], other_arf):
        rep = render_report(make_event(2, original=original), settings)
        assert rep is not None
        assert check(rep.data).fields["feedback-type"] == ["abuse"]


def test_checker_rejects_broken_reports(settings):
    good = render_report(make_event(1), settings).data
    check(good)
    broken = {
        "missing feedback-type": good.replace(b"Feedback-Type: abuse\r\n", b""),
        "twice": good.replace(b"Version: 1\r\n", b"Version: 1\r\nArrival-Date: Fri, 27 Nov "
                                                 b"2026 10:00:00 +0000\r\n"),
        "bad type": good.replace(b"Feedback-Type: abuse", b"Feedback-Type: spammy"),
        "order": good.replace(b"Content-Type: message/feedback-report",
                              b"Content-Type: text/x-nothing"),
        "bare lf": good.replace(b"\r\n", b"\n", 3),
        "rcpt": good.replace(b"<bob@example.org>", b"bob@example.org"),
    }
    for name, data in broken.items():
        with pytest.raises(ArfError):
            check(data)
            pytest.fail(name)


def test_settings_validation(tmp_path):
    with pytest.raises(ValueError, match="reports.to"):
        make_settings(tmp_path, to="abuse@isp.example\r\nBcc: x@y")
    with pytest.raises(ValueError, match="max_per_hour"):
        make_settings(tmp_path, max_per_hour=0)
    with pytest.raises(ValueError, match="spool_dir"):
        make_settings(tmp_path, spool_dir="relative")
    with pytest.raises(ValueError, match="action"):
        make_event(1, action="explode")
    with pytest.raises(ValueError, match="report_to"):
        make_event(1, report_to="x@y.example, z@w.example")
    assert ReportSettings(to="a@b.example", hostname="h.example").from_addr == "outpost-reports@h.example"


@pytest.mark.parametrize("value", ["\udcff\udcfe", "a\ud800b", "x\u2028Bcc: y@z.example",
                                   "\u00e4\u20ac\U0001F600", "=?utf-8?q?=0D=0ABcc:_x?=", "%s%n"])
def test_odd_text_values(settings, value):
    ev = make_event(1, identity=value, login=value, reason=value, remedy=value,
                    queue_id=value, evidence=(value,), verdict_class=value)
    rep = render_report(ev, settings)
    r = check(rep.data)
    assert not any(k.lower() == "bcc" for k, _ in r.headers)
    msg = parse(rep.data)
    assert msg["Subject"].startswith("[Outpost] spam rejected from webfarm/")
    text = text_part(msg)
    assert "\u2028" not in text and "\ud800" not in text


def test_original_quoting_a_feedback_part_is_fine(settings):
    original = (b"From: a@shop.example\r\nSubject: x\r\n\r\nContent-Type: message/feedback-report"
                b"\r\n\r\nFeedback-Type: abuse\r\nX-Evil: 1\r\n")
    rep = render_report(make_event(1, original=original), settings)
    assert check(rep.data).fields["feedback-type"] == ["abuse"]


def test_lock_of_a_whole_user_says_so(settings):
    ev = make_event(1, kind="lock", action="lock", identity="", lock_until=None,
                    reason="10 spam verdicts of all its identities in 600s",
                    remedy="outpost unlock webfarm")
    rep = render_report(ev, settings)
    assert check(rep.data).fields["feedback-type"] == ["other"]
    msg = parse(rep.data)
    assert msg["Subject"] == "[Outpost] user webfarm (all identities) locked permanently"
    text = text_part(msg)
    assert "User webfarm as a whole (every identity) locked permanently" in text
    assert "outpost unlock webfarm" in text
