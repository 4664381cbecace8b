#!/usr/bin/env python3
"""Build the manual pages from their reStructuredText sources.

``docs/man/outpost.8.rst`` and ``docs/man/outpost.yaml.5.rst`` include the
command-line part of ``docs/operations.rst`` and the whole configuration
reference ``docs/configuration.rst``, so the manual pages and the documents
are one text.  Writes ``build/man/outpost.8`` and ``build/man/outpost.yaml.5``
(or into ``--out DIR``).  Needs docutils; fails on any docutils warning (a
broken reference, a bad table), so a page never silently loses text.
"""
import argparse
import glob
import os
import re
import sys

from docutils.core import publish_string

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = os.path.join(ROOT, "docs", "man")


def groff_ascii(text: str) -> str:
    """Non-ASCII characters as groff escapes (what ``preconv`` would do), so
    the page renders the same with plain ``groff``/``nroff``, any locale."""
    return "".join(c if ord(c) < 128 else f"\\[u{ord(c):04X}]" for c in text)


def build(source: str) -> str:
    with open(source, encoding="utf-8") as fh:
        rst = fh.read()
    page = publish_string(
        rst, source_path=source, writer_name="manpage",
        settings_overrides={"report_level": 2, "halt_level": 2, "output_encoding": "unicode",
                            "syntax_highlight": "none",            # no Pygments needed
                            "input_encoding": "utf-8"})
    page = groff_ascii(page)
    # Ragged right: justifying narrow table cells only gives "cannot adjust
    # line" warnings (lintian's groff-message), never a better page.
    page = re.sub(r"^(\.TH .*)$", r"\1\n.ad l", page, count=1, flags=re.M)
    if "\n.TS" in page and not page.startswith("'\\\" t"):
        page = "'\\\" t\n" + page          # tell man(1) to run tbl
    return page


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "build", "man"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for source in sorted(glob.glob(os.path.join(SOURCES, "*.rst"))):
        name = os.path.basename(source)[:-len(".rst")]
        target = os.path.join(args.out, name)
        with open(target, "w", encoding="ascii") as fh:
            fh.write(build(source))
        print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
