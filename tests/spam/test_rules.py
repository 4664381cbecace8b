"""Hand-written rules: one positive and one negative case each."""

from __future__ import annotations

import io
import zipfile

import pytest

from outpost.spam.rules import (
    AttachDoubleExt,
    AttachExecutable,
    AttachMacro,
    FromBrandSpoof,
    FromDisplayAddrMismatch,
    HtmlPasswordForm,
    ManyHeaderRecipients,
    MissingDate,
    MissingMessageId,
    PhishLinkMismatch,
    ReplyToFreemail,
    RulesSettings,
    UrlShortener,
    base_domain,
    default_rules,
)
from tests.spam.helpers import CTX, view


def fires(rule, v) -> list[str]:
    return [e.name for e in rule.check(v, CTX)]


def test_base_domain():
    assert base_domain("a.b.example.com") == "example.com"
    assert base_domain("shop.example.co.uk") == "example.co.uk"
    assert base_domain("example.org") == "example.org"


def test_phish_link_mismatch():
    r = PhishLinkMismatch()
    bad = view(html='<a href="http://evil.example.net/x">https://www.paypal.com/signin</a>')
    ev = r.check(bad, CTX)
    assert [e.name for e in ev] == ["phish_link_mismatch"] and ev[0].points == 3.0
    assert "paypal.com" in ev[0].detail and "evil.example.net" in ev[0].detail
    same = view(html='<a href="https://login.paypal.com/x">www.paypal.com</a>')
    assert fires(r, same) == []
    words = view(html='<a href="http://track.example.net/x">walmart.com</a>')   # not a URL shown
    assert fires(r, words) == []


def test_html_password_form():
    r = HtmlPasswordForm()
    assert fires(r, view(html="<form action='http://x.example/'>Password: "
                              "<input type='password' name=p></form>")) == ["html_password_form"]
    assert fires(r, view(html="<form><input type=text name=q></form>")) == []
    assert fires(r, view(text="your password is <input type=password>")) == []


def test_url_shortener():
    r = UrlShortener()
    assert fires(r, view(text="see https://bit.ly/abc")) == ["url_shortener"]
    assert fires(r, view(text="see https://bitly.example.com/abc")) == []
    custom = UrlShortener(RulesSettings(shorteners=frozenset({"sho.rt"})))
    assert fires(custom, view(text="http://sho.rt/x")) == ["url_shortener"]


def test_from_display_addr_mismatch():
    r = FromDisplayAddrMismatch()
    assert fires(r, view(from_='"service@paypal.com" <x@evil.example>')) == \
        ["from_display_addr_mismatch"]
    assert fires(r, view(from_='"bob@mail.example.org" <bob@example.org>')) == []
    assert fires(r, view(from_="Bob Smith <bob@example.org>")) == []


def test_from_brand_spoof():
    r = FromBrandSpoof()
    assert fires(r, view(from_='"PayPal Security" <alert@secure-pp.example>')) == ["from_brand_spoof"]
    assert fires(r, view(from_='"Bank of America" <alerts@bankofamerica.com>')) == []
    assert fires(r, view(from_='"Applebee Farms" <info@farm.example>')) == []     # word match only


def test_replyto_freemail():
    r = ReplyToFreemail()
    assert fires(r, view(from_="ceo@company.example",
                         headers={"Reply-To": "ceo.private@gmail.com"})) == ["replyto_freemail"]
    assert fires(r, view(from_="me@gmail.com", headers={"Reply-To": "me2@gmail.com"})) == []
    assert fires(r, view(from_="a@company.example", headers={"Reply-To": "b@company.example"})) == []
    assert fires(r, view(from_="a@company.example")) == []


def _zip(*names: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n in names:
            zf.writestr(n, b"data")
    return buf.getvalue()


@pytest.mark.parametrize("name", ["setup.exe", "x.SCR", "run.js", "a.vbs", "b.bat", "c.cmd",
                                  "d.com", "e.pif", "f.jar", "g.hta"])
def test_attach_executable_positive(name):
    v = view(attachments=((name, b"MZ", "application/octet-stream"),))
    assert fires(AttachExecutable(), v) == ["attach_executable"]


def test_attach_executable_negative_and_zip():
    r = AttachExecutable()
    assert fires(r, view(attachments=(("report.pdf", b"%PDF", "application/pdf"),))) == []
    assert fires(r, view(attachments=(("a.zip", _zip("docs/readme.txt"), "application/zip"),))) == []
    assert fires(r, view(attachments=(("a.zip", _zip("x/invoice.exe"), "application/zip"),))) == \
        ["attach_executable"]


def test_attach_double_ext():
    r = AttachDoubleExt()
    assert fires(r, view(attachments=(("invoice.pdf.exe", b"MZ", "application/octet-stream"),))) \
        == ["attach_double_ext"]
    assert fires(r, view(attachments=(("my.setup.exe", b"MZ", "application/octet-stream"),))) == []
    assert fires(r, view(attachments=(("report.2024.pdf", b"%PDF", "application/pdf"),))) == []


def test_attach_macro():
    r = AttachMacro()
    assert fires(r, view(attachments=(("budget.xlsm", b"PK", "application/octet-stream"),))) == \
        ["attach_macro"]
    ooxml = _zip("[Content_Types].xml", "word/document.xml", "word/vbaProject.bin")
    assert fires(r, view(attachments=(("letter.docx", ooxml, "application/octet-stream"),))) == \
        ["attach_macro"]
    clean = _zip("[Content_Types].xml", "word/document.xml")
    assert fires(r, view(attachments=(("letter.docx", clean, "application/octet-stream"),))) == []


def test_missing_date_and_message_id():
    assert fires(MissingDate(), view(date=False)) == ["missing_date"]
    assert fires(MissingDate(), view()) == []
    assert fires(MissingMessageId(), view(msgid=False)) == ["missing_message_id"]
    assert fires(MissingMessageId(), view()) == []


def test_many_header_recipients():
    r = ManyHeaderRecipients(RulesSettings(max_header_recipients=10))
    many = ", ".join("u%d@example.net" % i for i in range(11))
    ev = r.check(view(to=many), CTX)
    assert [e.name for e in ev] == ["many_header_recipients"] and "11 addresses" in ev[0].detail
    ten = ", ".join("u%d@example.net" % i for i in range(10))
    assert fires(r, view(to=ten)) == []
    assert fires(r, view(to="a@example.net", headers={"Cc": many})) == ["many_header_recipients"]


def test_points_configurable_and_zero_disables():
    s = RulesSettings(missing_date=2.5, url_shortener=0.0)
    assert MissingDate(s).check(view(date=False), CTX)[0].points == 2.5
    assert UrlShortener(s).check(view(text="https://bit.ly/x"), CTX) == []


def test_settings_validation():
    with pytest.raises(ValueError):
        RulesSettings(max_header_recipients=0)
    with pytest.raises(ValueError):
        RulesSettings(attach_macro="high")


def test_default_rules_unique_names_and_clean_message():
    rules = default_rules()
    names = [r.name for r in rules]
    assert len(names) == len(set(names)) == 12
    assert [e for r in rules for e in r.check(view(), CTX)] == []
