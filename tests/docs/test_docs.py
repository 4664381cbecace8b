"""The documentation: README.rst and docs/*.rst are valid reStructuredText
whose cross-file section references resolve, the README stays a front page,
and the manual pages build from the same text and render without warnings."""
import glob
import os
import re
import shutil
import subprocess
import sys

import pytest

docutils_core = pytest.importorskip("docutils.core")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = ["README.rst", "CHANGELOG.rst"] + sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.rst")))


def _problems(path: str) -> list[str]:
    """docutils' warnings and errors for one document (unknown targets,
    broken tables, bad directives)."""
    import io
    stream = io.StringIO()
    with open(os.path.join(ROOT, path), encoding="utf-8") as fh:
        docutils_core.publish_doctree(
            fh.read(), source_path=os.path.join(ROOT, path),
            settings_overrides={"report_level": 2, "halt_level": 5, "warning_stream": stream,
                                "syntax_highlight": "none"})
    return stream.getvalue().splitlines()


@pytest.mark.parametrize("path", DOCS)
def test_document_has_no_docutils_warnings(path):
    assert _problems(path) == []


def test_a_broken_reference_is_reported(tmp_path):
    """The check above can fail: a reference to a section nobody has."""
    bad = tmp_path / "bad.rst"
    bad.write_text("Title\n=====\n\nSee `No such section`_.\n")
    assert any("no such section" in line.lower() for line in _problems(str(bad)))


def test_cross_file_links_are_up_to_date():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "docs_links.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_readme_is_a_front_page():
    with open(os.path.join(ROOT, "README.rst"), encoding="utf-8") as fh:
        text = fh.read()
    assert len(text.splitlines()) <= 300
    for needed in ("make demo", "make test", "Installing for production", "docs/configuration.rst",
                   "docs/troubleshooting.rst", "docs/upgrading.rst"):
        assert needed in text


def test_every_configuration_key_is_in_the_reference():
    """Every top-level, user and ``spam:`` key the loader accepts is documented in the reference
    (and so in outpost.yaml(5))."""
    from outpost.config import parse
    with open(os.path.join(ROOT, "docs", "configuration.rst"), encoding="utf-8") as fh:
        text = fh.read()
    keys = set()
    for name in ("TOP_KEYS", "POLICY_KEYS", "SPAM_KEYS", "USER_KEYS"):
        assert getattr(parse, name, None), f"outpost.config.parse.{name} moved: update this test"
        keys |= getattr(parse, name)
    missing = sorted(k for k in keys if f"``{k}``" not in text)
    assert missing == []


@pytest.fixture(scope="module")
def man_pages(tmp_path_factory):
    out = tmp_path_factory.mktemp("man")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "build_man.py"),
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.parametrize("page, section, expected", [
    ("outpost.8", "8", ["SYNOPSIS", "EXIT STATUS", "SIGHUP", "outpost unlock", "FILES",
                        "SEE ALSO", "store error, the command did not complete"]),
    ("outpost.yaml.5", "5", ["max_header_bytes", "on_store_error", "listener_auth",
                             "user_after_spam", "SMTP REPLIES", "552 5.3.4"]),
])
def test_man_page_renders_without_warnings(man_pages, page, section, expected):
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed")
    path = man_pages / page
    text = path.read_text(encoding="ascii")               # non-ASCII is escaped
    assert re.search(rf'^\.TH "[^"]+" "?{section}"? ', text, re.M)
    # -rcR=1: one long page, as man(1) shows it on a terminal; -Wbreak: a narrow
    # table cell that cannot be justified is layout, not an error.
    r = subprocess.run(["groff", "-t", "-man", "-Tutf8", "-wall", "-Wbreak", "-rcR=1",
                        "-P-c", "-P-b", "-P-u", str(path)], capture_output=True)
    assert r.returncode == 0
    assert r.stderr.decode() == ""
    rendered = re.sub(r"[\u2010-]\n\s*", "", r.stdout.decode("utf-8"))
    rendered = re.sub(r"\s+", " ", rendered)
    for word in expected:                   # docutils < 0.21 upper-cases titles
        assert word.lower() in rendered.lower(), word
