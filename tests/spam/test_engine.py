"""Engine: thresholds, overrides, failure policies, evidence header."""

from __future__ import annotations

import pytest

from outpost.spam.base import Check, CheckError, Evidence
from outpost.spam.engine import Engine, ScoringSettings, Verdict, default_checks, evidence_header
from tests.spam.helpers import CTX, view


class Fixed(Check):
    """Gives fixed evidence (pure-logic unit test double)."""

    def __init__(self, name: str, *evidence: tuple[str, float]) -> None:
        self.name = name
        self.evidence = [Evidence(n, p, "d") for n, p in evidence]
        self.closed = False

    def check(self, msg, ctx):
        return list(self.evidence)

    def close(self):
        self.closed = True


class Failing(Check):
    def __init__(self, name: str) -> None:
        self.name = name

    def check(self, msg, ctx):
        raise CheckError("spamd timed out")


class Buggy(Check):
    name = "buggy"

    def check(self, msg, ctx):
        raise KeyError("bug")


V = view()


def scan(checks, **kw) -> Verdict:
    return Engine(checks, ScoringSettings(**kw)).scan(V, CTX)


@pytest.mark.parametrize("points,cls", [(-1.0, "ham"), (2.9, "ham"), (3.0, "unsure"),
                                        (4.9, "unsure"), (5.0, "spam"), (12.0, "spam")])
def test_thresholds(points, cls):
    v = scan([Fixed("a", ("a", points))], unsure=3.0, spam=5.0)
    assert v.cls == cls and v.score == points


def test_sum_rounding_and_sorting():
    v = scan([Fixed("a", ("small", 0.04), ("neg", -1.26)), Fixed("b", ("big", 4.44))])
    assert [e.name for e in v.evidence] == ["big", "neg"]     # 0.04 rounds to 0.0: dropped
    assert [e.points for e in v.evidence] == [4.4, -1.3]
    assert v.score == 3.1 and v.cls == "unsure"
    assert not v.partial and v.errors == () and not v.tempfail


def test_weights_by_check_and_evidence_and_disabled():
    checks = [Fixed("rules", ("r1", 2.0), ("r2", 1.0)), Fixed("bayes", ("bayes_spam", 4.0))]
    v = scan(checks, weights={"rules": 2.0, "r2": 0.0})
    assert {e.name: e.points for e in v.evidence} == {"r1": 4.0, "bayes_spam": 4.0}
    assert v.score == 8.0
    v = scan(checks, disabled=frozenset({"bayes"}))
    assert v.score == 3.0 and "bayes_spam" not in [e.name for e in v.evidence]


def test_failure_policies():
    v = scan([Failing("spamd"), Fixed("a", ("a", 1.0))])
    assert v.score == 1.0 and not v.tempfail
    assert len(v.errors) == 1 and v.errors[0].check == "spamd" and v.errors[0].policy == "ignore"
    assert "timed out" in v.errors[0].error
    v = scan([Failing("spamd")], failure_policy={"spamd": "tempfail"})
    assert v.tempfail and v.errors[0].policy == "tempfail"
    with pytest.raises(KeyError):          # bugs are not swallowed
        scan([Buggy()])


def test_partial_flag_passes_through():
    from outpost.spam.message import parse_message
    eng = Engine([Fixed("a")], ScoringSettings(max_scan=2048))
    pv = eng.parse(b"Subject: x\r\n\r\n" + b"y" * 5000)
    assert pv.partial and eng.scan(pv, CTX).partial
    assert not eng.scan(parse_message(b"Subject: x\r\n\r\nshort"), CTX).partial


def test_settings_validation():
    with pytest.raises(ValueError, match="exceed"):
        ScoringSettings(unsure=6.0, spam=5.0)
    with pytest.raises(ValueError, match="weight"):
        ScoringSettings(weights={"a": -1})
    with pytest.raises(ValueError, match="failure policy"):
        ScoringSettings(failure_policy={"a": "explode"})
    with pytest.raises(ValueError):
        ScoringSettings(spam=float("nan"))
    s = ScoringSettings(weights={"a": 1.5})
    with pytest.raises(TypeError):
        s.weights["b"] = 2.0          # frozen mapping


def test_engine_rejects_duplicate_names():
    with pytest.raises(ValueError, match="duplicate"):
        Engine([Fixed("a"), Fixed("a")])


def test_close_closes_checks():
    c = Fixed("a")
    Engine([c]).close()
    assert c.closed


def test_evidence_header_format_and_truncation():
    v = scan([Fixed("a", ("bulk_same_body", 6.0), ("url_listed", 5.0), ("bayes_ham", -1.0))])
    assert evidence_header(v) == "bulk_same_body(6.0) url_listed(5.0) bayes_ham(-1.0)"
    cut = evidence_header(v, max_len=40)
    assert cut == "bulk_same_body(6.0) url_listed(5.0) …" and len(cut) <= 40
    short = evidence_header(v, max_len=22)
    assert short == "bulk_same_body(6.0) …" and len(short) <= 22
    assert evidence_header(v, max_len=5) == "…"
    assert evidence_header(scan([])) == ""


def test_default_checks_build_an_engine():
    eng = Engine(default_checks())
    names = [c.name for c in eng.checks]
    assert names[0] == "bayes" and "attach_double_ext" in names
    from tests.spam.helpers import build
    raw = build(attachments=(("invoice.pdf.exe", b"MZ" * 10, "application/octet-stream"),))
    v = eng.scan(eng.parse(raw), CTX)
    got = {e.name for e in v.evidence}
    assert {"attach_double_ext", "attach_executable"} <= got
    assert v.score >= 10.0 and v.cls == "spam"     # 5 + 6, Bayes at worst -1


def test_html_past_the_tag_bound_still_gets_a_verdict():
    # past MAX_HTML_TAGS tags the HTML loses its tags instead of being
    # parsed (html.parser costs about 6 µs a tag): its text and the URLs
    # written in it are still scanned, and the message gets a verdict
    from outpost.spam.message import MAX_HTML_TAGS
    from tests.spam.helpers import build
    eng = Engine(default_checks())
    filler = "<p><b>news</b> of the week</p>\n" * MAX_HTML_TAGS          # 4 tags each
    html = ('<html><body><a href="http://login.example.net/">www.paypal.com</a>' + filler
            + '<p>late words here <a href="http://late.example.org/x">click</a></p></body></html>')
    assert html.count("<") > 3 * MAX_HTML_TAGS
    raw = build(text=None, html=html,
                attachments=(("invoice.pdf.exe", b"MZ" * 10, "application/octet-stream"),))
    view = eng.parse(raw)
    assert "late words here click" in view.text and view.text.count("news of the week") == MAX_HTML_TAGS
    assert {"login.example.net", "late.example.org"} <= {u.host for u in view.urls}
    v = eng.scan(view, CTX)
    got = {e.name for e in v.evidence}
    assert {"phish_link_mismatch", "attach_double_ext", "attach_executable"} <= got
    assert v.cls == "spam"


def test_html_past_the_parsed_part_is_read_to_its_end_and_gets_a_verdict():
    # past MAX_HTML_TAGS tags the HTML is read without its tags, to its end
    # (cut at 100 000 characters before, so padding hid what followed);
    # its character references are decoded in the first
    # MAX_HTML_REST_UNESCAPE characters, the URLs written in it all found
    from outpost.spam.message import MAX_HTML_REST_UNESCAPE, MAX_HTML_TAGS
    from tests.spam.helpers import build
    eng = Engine(default_checks())
    tags = "<b>x</b>" * MAX_HTML_TAGS
    filler = "<p>plain words of the newsletter&nbsp;caf&eacute;</p>\n" * (MAX_HTML_REST_UNESCAPE // 30)
    html = ("<html><body>" + tags + "<p>early words</p>" + filler + "<!-- a comment -->"
            + '<p>late words <a href="http://late.example.org/x">click</a></p></body></html>')
    raw = build(text=None, html=html,
                attachments=(("invoice.pdf.exe", b"MZ" * 10, "application/octet-stream"),))
    view = eng.parse(raw)
    assert "early words" in view.text and "late words click" in view.text
    assert "comment" not in view.text
    assert "caf\u00e9</p>" not in view.text and "caf\u00e9" in view.text and "caf&eacute;" in view.text
    assert "late.example.org" in {u.host for u in view.urls}
    v = eng.scan(view, CTX)
    assert {"attach_double_ext", "attach_executable"} <= {e.name for e in v.evidence}
    assert v.cls == "spam"
