"""Speed rewrites of the spam engine give what the code they replaced gave.

Each reference below is the replaced code as it was (issue #17); the
rewrite must agree with it on generated input and on the corpus."""

from __future__ import annotations

import hashlib
import heapq
from typing import Optional

from hypothesis import example, given, settings
from hypothesis import strategies as st

from outpost.spam import bayes, bulk
from outpost.spam.bayes import _WORD_RE
from outpost.spam.message import parse_message
from tests.spam.helpers import CTX


def _words_reference(text: str, prefix: str, out: set[str], limit: int = 100_000) -> None:
    for w in set(_WORD_RE.findall(text[:limit])):
        w = w.lower().rstrip(".")
        if 3 <= len(w) <= 20:
            out.add(prefix + w)
        elif len(w) > 20:
            out.add("%sskip:%s %d" % (prefix, w[0], len(w) // 10 * 10))


def _minhash_reference(words: list[str], bands: int = 4) -> list[str]:
    word_hash = {w: int.from_bytes(hashlib.blake2b(w.encode("utf-8", "surrogatepass"),
                                                   digest_size=8).digest(), "big")
                 for w in set(words[:bulk.MAX_SHINGLE_WORDS])}
    hs = [word_hash[w] for w in words[:bulk.MAX_SHINGLE_WORDS]]
    mins: list[Optional[int]] = [None] * bulk.MINHASH_BINS
    for a, b, c in zip(hs, hs[1:], hs[2:]):
        v = (a * bulk._M1 + b * bulk._M2 + c * bulk._M3) & bulk._MASK64
        v ^= v >> 29
        v = (v * bulk._M4) & bulk._MASK64
        v ^= v >> 32
        i, v = v % bulk.MINHASH_BINS, v // bulk.MINHASH_BINS
        cur = mins[i]
        if cur is None or v < cur:
            mins[i] = v
    per = bulk.MINHASH_BINS // bands
    return [bulk._h(",".join("-" if x is None else str(x) for x in mins[i * per:(i + 1) * per]))
            for i in range(bands)]


# pieces that meet every branch: case, dots and dashes inside words, '_',
# '$' and '€', blanks str.split knows (\x1c), long words,
# non-ASCII letters whose lower case is longer
# ('İ') or whose case differs ('Straße', 'ǅ'), digits of other scripts
_PIECES = ["Hello", "WORLD", "a.b", "x-y.", "e.g.", "$100", "100%", "€5", "_", "a_b", "don't",
           "abcdefghijklmnopqrstuvwxyz", "Q" * 31, "İstanbul", "Straße", "ǅx", "\u0663\u0664",
           "é", "...", " ", "\n", "-", ".", "ab", "abc", "ABC", "'", "$", "%", "__a__", "9.",
           ".9", "\t", "\x1c", "\x0b", "\u00a0", "@", "<b>", "x@y.com", "Z"]


@settings(max_examples=1500, deadline=None)
@given(text=st.lists(st.sampled_from(_PIECES), max_size=40).map("".join),
       prefix=st.sampled_from(["", "su:", "fr:"]),
       limit=st.sampled_from([5, 2000, 100_000]))
def test_words_equal_reference(text: str, prefix: str, limit: int) -> None:
    new: set[str] = {"kept"}
    old: set[str] = {"kept"}
    bayes._words(text, prefix, new, limit)
    _words_reference(text, prefix, old, limit)
    assert new == old


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=24).filter(lambda w: " " not in w), max_size=60)
       | st.lists(st.sampled_from(["the", "offer", "0", "#", "you", "free", "x"]), max_size=1200))
def test_minhash_bands_equal_reference(words: list[str]) -> None:
    for bands in (4, 2):
        assert bulk.minhash_bands(words, bands) == _minhash_reference(words, bands)


def test_corpus_words_and_bands_equal_reference(corpus) -> None:
    """Every corpus message: its words (text and token headers) and its
    MinHash bands as the replaced code found them."""
    files = sorted(p for kind in ("spam", "ham", "hard-ham") if (corpus / kind).is_dir()
                   for p in (corpus / kind).iterdir() if p.is_file())
    assert len(files) > 100
    for path in files[::3]:
        view = parse_message(path.read_bytes())
        new: set[str] = set()
        old: set[str] = set()
        bayes._words(view.text, "", new)
        _words_reference(view.text, "", old)
        for _name, value in view.headers:
            bayes._words(value, "su:", new, 2000)
            _words_reference(value, "su:", old, 2000)
        assert new == old, path
        norm = bulk.normalise_text(view.text, view.header("Subject") or "",
                                   bulk.personal_words(view, CTX))
        words = norm.split()
        assert bulk.minhash_bands(words) == _minhash_reference(words), path


def _clues_reference(model: bayes.Model, tokens) -> list[tuple[float, str]]:
    least = model.settings.minimum_prob_strength
    strong = {}
    for tok in model.counts:
        p = model.token_prob(tok)
        if p is not None and abs(p - 0.5) >= least:
            strong[tok] = p
    found = [(abs(p - 0.5), p, tok) for tok in tokens if (p := strong.get(tok)) is not None]
    top = heapq.nlargest(model.settings.max_discriminators, found)
    return [(p, tok) for _, p, tok in top]


_SMALL_MODEL = bayes.Model(4, 4, {f"t{i}": [i % 5, (i * 3) % 5] for i in range(60)},
                           bayes.BayesSettings(max_discriminators=7))


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from([f"t{i}" for i in range(64)]), max_size=80))
def test_clues_equal_reference(tokens: list[str]) -> None:
    """Clues ranked once per model give what a sort of each message's gave:
    equal strengths (0.3 and 0.7), equal probabilities (then by token),
    repeated tokens, fewer and more than max_discriminators."""
    assert _SMALL_MODEL.clues(tokens) == _clues_reference(_SMALL_MODEL, tokens)
    assert _SMALL_MODEL.clues(set(tokens)) == _clues_reference(_SMALL_MODEL, set(tokens))


def test_corpus_clues_equal_reference(corpus) -> None:
    model = bayes.load_default_model()
    files = sorted(p for kind in ("spam", "ham", "hard-ham") if (corpus / kind).is_dir()
                   for p in (corpus / kind).iterdir() if p.is_file())
    for path in files[1::4]:
        tokens = bayes.tokenize(parse_message(path.read_bytes()))
        assert model.clues(tokens) == _clues_reference(model, tokens), path


_CLAMPED_MODEL = bayes.Model(10_000_000, 3, {f"t{i}": [i * 997_003 % 10_000_001, i % 4] for i in range(60)},
                             bayes.BayesSettings(max_discriminators=9, unknown_word_strength=1e-9))


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from([f"t{i}" for i in range(64)]), max_size=80),
       st.sampled_from([_SMALL_MODEL, _CLAMPED_MODEL]))
def test_combine_ranks_equal_combine(tokens: list[str], model: bayes.Model) -> None:
    """The logarithms taken once per model give the very float that
    combining each message's clues gave (no clue, one, more than
    max_discriminators, probabilities clamped at 1e-6 and 1 - 1e-6)."""
    ranks = model.clue_ranks(tokens)
    assert model.combine_ranks(ranks) == bayes.Model.combine(model.clues(tokens))
    assert model.score_tokens(tokens) == bayes.Model.combine(model.clues(tokens))


def test_corpus_combine_ranks_equal_combine(corpus) -> None:
    model = bayes.load_default_model()
    files = sorted(p for kind in ("spam", "ham", "hard-ham") if (corpus / kind).is_dir()
                   for p in (corpus / kind).iterdir() if p.is_file())
    for path in files[1::4]:
        tokens = bayes.tokenize(parse_message(path.read_bytes()))
        assert model.combine_ranks(model.clue_ranks(tokens)) == \
            bayes.Model.combine(model.clues(tokens)), path


def _filename_reference(part) -> str:
    """``message._filename`` as it was: the parameters always parsed."""
    import email.utils

    from outpost.spam.message import decode_header_value
    try:
        name = part.get_filename()
    except (ValueError, LookupError, TypeError):
        name = None
    if name is None:
        try:
            param = part.get_param("name")
        except (ValueError, LookupError, TypeError):
            param = None
        name = email.utils.collapse_rfc2231_value(param) if isinstance(param, tuple) else param
    return decode_header_value(name)[:255] if name else ""


_FIELD_PIECES = ["text/plain", "application/pdf", "attachment", "inline", ";", " ", "=", '"',
                 "name", "NAME", "Name*", "name*0", "name*1*", "filename", "FileName*", "nam",
                 "e", "a.pdf", "utf-8''%E2%82%AC.txt", "=?utf-8?q?x=2Ezip?=", "charset=us-ascii",
                 "\udcff", "é", "\t", "''"]


@settings(max_examples=1500, deadline=None)
@given(ctype=st.one_of(st.none(), st.lists(st.sampled_from(_FIELD_PIECES), max_size=10).map("".join)),
       disp=st.one_of(st.none(), st.lists(st.sampled_from(_FIELD_PIECES), max_size=10).map("".join)),
       disp_name=st.sampled_from(["Content-Disposition", "content-DISPOSITION"]))
@example(ctype='application/pdf; NAME="a.pdf"', disp=None, disp_name="Content-Disposition")
@example(ctype="application/pdf; Name*0*=utf-8''%E2%82%AC; name*1=.txt", disp=None,
         disp_name="Content-Disposition")
@example(ctype="application/pdf", disp="inline; filename=a.pdf", disp_name="content-DISPOSITION")
def test_filename_equal_reference(ctype: Optional[str], disp: Optional[str], disp_name: str) -> None:
    """Parameters left unparsed where no name can be give the same file name
    (it fails when the shortcut misses an upper-case, RFC 2231 or
    Content-Disposition name)."""
    from email.message import Message

    from outpost.spam.message import _filename
    part = Message()
    if ctype is not None:
        part["Content-Type"] = ctype
    if disp is not None:
        part[disp_name] = disp
    assert _filename(part) == _filename_reference(part)


@settings(max_examples=500, deadline=None)
@given(text=st.lists(st.sampled_from(["Hi John,", "hello", "www.example.com/x", "a@b.example",
                                      "\n-- \n", "\n> quoted http://q.example/y\n", "wrote:",
                                      " words ", "2024", "\n", "lorem ipsum dolor sit amet "]),
                     max_size=40).map("".join))
def test_fingerprints_split_once(text: str) -> None:
    """The text split once for the text and URL fingerprints gives what
    normalise_text and the URL set gave on their own splits."""
    from outpost.spam.base import MessageView, Url
    from outpost.spam.message import _text_urls
    urls = tuple(_text_urls(text)) + (Url("http://q.example/y", "q.example"),)
    view = MessageView(headers=(("Subject", "Re: offer"), ("From", "x@sender.example")),
                       text=text, html="", urls=urls, attachments=(), size=len(text), partial=False)
    s = bulk.BulkSettings(min_text_chars=1, max_text_chars=200)
    fps = bulk.fingerprints(view, CTX, s)
    short = text[:s.max_text_chars * 2]
    norm = bulk.normalise_text(short, "Re: offer", bulk.personal_words(view, CTX), s.max_text_chars)
    assert fps.get("t") == (bulk._h(norm) if norm else None)
    _body, tail = bulk._split_personal(short)
    own = bulk._own_domains(view, CTX)
    keys = {bulk._url_key(u.href) for u in urls
            if u.host and not bulk._is_own(u.host, own) and u.href not in tail} - {""}
    assert fps.get("u") == (bulk._h("\n".join(sorted(keys))) if keys else None)
