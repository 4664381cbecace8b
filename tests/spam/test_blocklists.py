"""BlocklistCheck: file format, matching semantics and reload on change."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from outpost.spam.base import MessageView, ScanContext, Url
from outpost.spam.blocklists import BlocklistCheck, BlocklistError, BlocklistSettings, load_list

URL_LIST = """\
# spam landing pages
bad.example
*.wild.example          # sub-domains only
  evil.example/promo     # a path prefix
http://tracker.example/t/
192.0.2.7
198.51.100.0/24
2001:db8:bad::/48
Bücher.example
faß.example
"""

SENDER_LIST = """\
# known spammers
spammer@freemail.example
@spamdomain.example
junk.example
"""


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def view(*hrefs: str, from_: str = "") -> MessageView:
    urls = []
    for h in hrefs:
        rest = h.split("://", 1)[1]
        host = rest.split("/", 1)[0].split("?", 1)[0]
        urls.append(Url(href=h, host=host.lower()))
    headers = (("From", from_),) if from_ else ()
    return MessageView(headers=headers, text="", html="", urls=tuple(urls), attachments=(),
                       size=0, partial=False)


def ctx(sender: str = "alice@good.example") -> ScanContext:
    return ScanContext(user="webfarm", identity=sender, sender=sender, recipients=("r@x.example",))


@pytest.fixture
def lists(tmp_path: Path) -> tuple[Path, Path]:
    u = tmp_path / "urls.txt"
    u.write_text(URL_LIST, encoding="utf-8")
    s = tmp_path / "senders.txt"
    s.write_text(SENDER_LIST, encoding="utf-8")
    return u, s


@pytest.fixture
def check(lists: tuple[Path, Path]) -> BlocklistCheck:
    u, s = lists
    return BlocklistCheck(BlocklistSettings(url_files=(str(u),), sender_files=(str(s),)))


@pytest.mark.parametrize("href, listed", [
    ("http://bad.example/", True),
    ("https://x.y.bad.example/page?a=1", True),
    ("http://BAD.EXAMPLE./", True),
    ("http://notbad.example/", False),             # a suffix of the name is not a sub-domain
    ("http://bad.example.com/", False),
    ("http://wild.example/", False),               # *. lists sub-domains only
    ("http://a.wild.example/", True),
    ("http://evil.example/promo/summer", True),
    ("http://shop.evil.example/PROMO", True),
    ("http://evil.example/about", False),
    ("http://tracker.example/t/123", True),
    ("http://tracker.example/", False),
    ("http://192.0.2.7/x", True),
    ("http://192.0.2.8/x", False),
    ("http://198.51.100.200/", True),
    ("http://[2001:db8:bad::5]/", True),
    ("http://[2001:db8:900d::5]/", False),
    ("http://xn--bcher-kva.example/", True),       # punycode of the Unicode entry
    ("http://FAß.example/", True),                 # IDNA 2008, as the entry: xn--fa-hia.example
    ("http://xn--fa-hia.example/", True),
    ("http://fass.example/", False),               # IDNA 2003 mapped ß to ss
    ("http://good.example/", False),
])
def test_url_matching(check: BlocklistCheck, href: str, listed: bool) -> None:
    ev = check.check(view("http://fine.example/", href), ctx())
    assert [e.name for e in ev] == (["url_listed"] if listed else [])
    if listed:
        assert ev[0].points == 6.0 and "urls.txt" in ev[0].detail


@pytest.mark.parametrize("sender, from_, listed", [
    ("spammer@freemail.example", "", True),
    ("SPAMMER@FreeMail.example", "", True),
    ("other@freemail.example", "", False),          # an address entry is exact
    ("x@spamdomain.example", "", True),
    ("x@sub.junk.example", "", True),
    ("alice@good.example", "Spammer <spammer@freemail.example>", True),   # From header
    ("alice@good.example", "Alice <alice@good.example>", False),
    ("", "", False),
])
def test_sender_matching(check: BlocklistCheck, sender: str, from_: str, listed: bool) -> None:
    ev = check.check(view(from_=from_), ctx(sender))
    assert [e.name for e in ev] == (["sender_listed"] if listed else [])
    if listed:
        assert "senders.txt" in ev[0].detail


def test_both_evidences_once(check: BlocklistCheck) -> None:
    ev = check.check(view("http://bad.example/1", "http://a.bad.example/2",
                          from_="x@junk.example"), ctx("spammer@freemail.example"))
    assert sorted(e.name for e in ev) == ["sender_listed", "url_listed"]
    url_ev = next(e for e in ev if e.name == "url_listed")
    assert "bad.example" in url_ev.detail and "a.bad.example" in url_ev.detail


def test_reload_on_change_at_most_every_interval(lists: tuple[Path, Path]) -> None:
    u, s = lists
    clock = Clock()
    check = BlocklistCheck(BlocklistSettings(url_files=(str(u),), reload_interval=30),
                           clock=clock)
    msg = view("http://new.example/")
    assert check.check(msg, ctx()) == []
    u.write_text(URL_LIST + "new.example\n", encoding="utf-8")
    os.utime(u, ns=(os.stat(u).st_mtime_ns + 10**9,) * 2)
    clock.t += 10
    assert check.check(msg, ctx()) == []               # not looked at yet
    clock.t += 25
    assert [e.name for e in check.check(msg, ctx())] == ["url_listed"]
    assert check.maybe_reload() is False               # the next look is 30 s later


def test_bad_reload_keeps_old_entries(lists: tuple[Path, Path], caplog) -> None:
    u, _ = lists
    clock = Clock()
    check = BlocklistCheck(BlocklistSettings(url_files=(str(u),), reload_interval=1),
                           clock=clock)
    u.write_text("bad.example\nthis is not an entry\n", encoding="utf-8")
    clock.t += 2
    with caplog.at_level(logging.ERROR, logger="outpost.spam.blocklists"):
        assert check.maybe_reload() is False
    assert "not reloaded" in caplog.text and "urls.txt:2" in caplog.text
    assert check.check(view("http://192.0.2.7/"), ctx())      # old list still in force
    u.unlink()
    clock.t += 2
    with caplog.at_level(logging.ERROR, logger="outpost.spam.blocklists"):
        assert check.maybe_reload() is False
    assert check.check(view("http://192.0.2.7/"), ctx())
    u.write_text("only.example\n", encoding="utf-8")
    clock.t += 2
    assert check.maybe_reload() is True
    assert check.check(view("http://192.0.2.7/"), ctx()) == []
    assert check.check(view("http://only.example/"), ctx())


@pytest.mark.parametrize("content, message", [
    ("good.example\nfoo bar\n", "urls.txt:2"),
    ("a..*.example\n", "not a host"),
    ("a..example\n", "not a host"),
    ("someone@x.example\n", "sender lists"),
    ("10.0.0.0/99\n", "bad network"),
    (b"\xff\xfe\n", "not UTF-8"),
])
def test_invalid_file_at_start(tmp_path: Path, content, message: str) -> None:
    p = tmp_path / "urls.txt"
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content, encoding="utf-8")
    with pytest.raises(BlocklistError, match=message):
        BlocklistCheck(BlocklistSettings(url_files=(str(p),)))


def test_missing_file_at_start(tmp_path: Path) -> None:
    with pytest.raises(BlocklistError, match="cannot read"):
        BlocklistCheck(BlocklistSettings(sender_files=(str(tmp_path / "none.txt"),)))


def test_max_entries(tmp_path: Path) -> None:
    p = tmp_path / "urls.txt"
    p.write_text("".join(f"d{i}.example\n" for i in range(11)), encoding="utf-8")
    with pytest.raises(BlocklistError, match="more than 10 entries"):
        load_list(str(p), False, 10)
    assert load_list(str(p), False, 11).size() == 11


@pytest.mark.parametrize("kwargs", [
    {"url_files": "relative.txt"}, {"url_files": ("relative.txt",)},
    {"reload_interval": -1}, {"url_points": float("nan")}, {"sender_points": -2},
    {"max_entries": 0},
])
def test_settings_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        BlocklistSettings(**kwargs)


def test_settings_lists_become_tuples(tmp_path: Path) -> None:
    s = BlocklistSettings(url_files=[str(tmp_path / "a")])    # type: ignore[arg-type]
    assert s.url_files == (str(tmp_path / "a"),)
