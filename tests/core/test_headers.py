"""Header values Outpost writes: one line, ASCII-safe, bounded, folded."""

from outpost.core.headers import clean, fold, is_owned, safe_value


def test_controls_removed_and_blanks_collapsed():
    assert clean("a\r\nX-Evil: 1\0b  c") == "a X-Evil: 1 b c"
    assert "\n" not in clean("a\r\nb") and "\0" not in clean("a\0b")


def test_long_values_cut_with_an_ascii_ellipsis():
    value = clean("x" * 5000, limit=100)
    assert len(value) == 100 and value.endswith("...") and value.isascii()


def test_folding_keeps_lines_short_and_content_whole():
    text = " ".join(f"evidence_{i}(1.0)" for i in range(60))
    folded = safe_value(text)
    assert all(len(line) <= 80 for line in folded.split("\n"))
    assert " ".join(part.strip() for part in folded.split("\n")) == text
    assert fold("short") == "short"


def test_owned_headers_any_case():
    for name in ("X-Outpost-ID", "x-outpost-anything", "X-ORIGINATING-IP", "x-report-abuse-to"):
        assert is_owned(name)
    assert not is_owned("X-Originating-Script") and not is_owned("From")
