"""The shipped default model loads and classifies corpus messages."""

from __future__ import annotations

from outpost.spam.bayes import load_default_model, outbound_view
from outpost.spam.engine import Engine, default_checks
from tests.spam.helpers import CTX


def test_default_model_loads_and_is_small():
    import importlib.resources
    data = importlib.resources.files("outpost").joinpath("data", "default_model.bin").read_bytes()
    assert len(data) < 2_000_000
    m = load_default_model()
    assert m.nspam >= 400 and m.nham >= 2000 and len(m) > 5000


def _sample(corpus, label, n):
    files = sorted((corpus / label).glob("*.eml"))
    step = max(1, len(files) // n)
    return files[::step][:n]


def test_default_model_classifies_corpus_messages(corpus):
    m = load_default_model()
    spam = [m.score(outbound_view(p.read_bytes(), redact_corpus_owner=True))
            for p in _sample(corpus, "spam", 20)]
    ham = [m.score(outbound_view(p.read_bytes(), redact_corpus_owner=True))
           for p in _sample(corpus, "ham", 20)]
    # the model was trained on these messages: it must know them
    assert sum(p > 0.9 for p in spam) >= 19
    assert sum(p < 0.1 for p in ham) >= 19


def test_engine_verdicts_on_corpus(corpus):
    eng = Engine(default_checks())
    spam = [eng.scan(outbound_view(p.read_bytes()), CTX) for p in _sample(corpus, "spam", 10)]
    ham = [eng.scan(outbound_view(p.read_bytes()), CTX) for p in _sample(corpus, "ham", 10)]
    assert sum(v.cls == "spam" for v in spam) >= 9
    assert all(v.cls == "ham" for v in ham)
    assert all(any(e.name == "bayes_spam" for e in v.evidence) for v in spam if v.cls == "spam")
