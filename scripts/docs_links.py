#!/usr/bin/env python3
"""Keep the links between README.rst and docs/*.rst working.

The documents refer to each other's sections by title, as one file did
before the split (```Postfix`_``, ```Connection slots`_``).  For every such
reference to a section of *another* file, this script writes a target
``.. _Title: other.rst#anchor`` into a block at the end of the referring
file, so the prose stays as written and docutils (and GitHub) resolve it.

    scripts/docs_links.py           rewrite the blocks
    scripts/docs_links.py --check   exit 1 if a block is out of date
"""
import argparse
import glob
import os
import re
import sys

from docutils.nodes import make_id

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARK = ".. Links to sections of the other documents (written by scripts/docs_links.py)."
UNDERLINE = re.compile(r"([=\-~^\"'`#*+])\1{2,}")
REFERENCE = re.compile(r"`([^`<]+?)(?:\s*<([^`<>]+?)_>)?`_(?!_)", re.S)


def documents() -> list[str]:
    return ["README.rst"] + sorted(
        os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.rst")))


def plain(title: str) -> str:
    """A title as docutils names it: inline literals lose their quotes."""
    return title.replace("``", "")


def norm(name: str) -> str:
    return " ".join(plain(name).split()).lower()


def split_block(text: str) -> str:
    i = text.find("\n" + MARK)
    return text if i < 0 else text[:i + 1]


def section_titles(text: str) -> list[str]:
    lines = text.split("\n")
    out = []
    for i in range(1, len(lines)):
        title = lines[i - 1]
        if (UNDERLINE.fullmatch(lines[i]) and title.strip() and not title.startswith(" ")
                and not UNDERLINE.fullmatch(title) and len(lines[i]) >= len(title.rstrip())):
            out.append(title.strip())
    return out


def local_targets(text: str) -> set[str]:
    names = {norm(t) for t in section_titles(text)}
    names |= {norm(m.group(1)) for m in re.finditer(r"^\.\. _`?([^`:]+)`?:", text, re.M)}
    return names


def references(text: str) -> list[str]:
    out = []
    for m in REFERENCE.finditer(text):
        out.append(norm(m.group(2) or m.group(1)))
    return out


def link_blocks() -> dict[str, str]:
    bodies = {}
    for doc in documents():
        with open(os.path.join(ROOT, doc), encoding="utf-8") as fh:
            bodies[doc] = split_block(fh.read())
    where = {}  # normalised title -> (file, title)
    for doc, body in bodies.items():
        for t in section_titles(body):
            where.setdefault(norm(t), (doc, t))
    result = {}
    for doc, body in bodies.items():
        here = local_targets(body)
        wanted = []
        for name in references(body):
            if name in here or name not in where or name in (w[0] for w in wanted):
                continue
            wanted.append((name, where[name]))
        body = body.rstrip("\n") + "\n"
        if wanted:
            lines = ["", "", MARK, ""]
            for _, (target_doc, title) in wanted:
                rel = os.path.relpath(os.path.join(ROOT, target_doc),
                                      os.path.dirname(os.path.join(ROOT, doc)))
                name = plain(title).replace("`", "\\`")
                if ":" in name:
                    name = f"`{name}`"
                lines.append(f".. _{name}: {rel}#{make_id(plain(title))}")
            body += "\n".join(lines) + "\n"
        result[doc] = body
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    stale = []
    for doc, body in link_blocks().items():
        path = os.path.join(ROOT, doc)
        with open(path, encoding="utf-8") as fh:
            if fh.read() == body:
                continue
        stale.append(doc)
        if not args.check:
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(body)
    if args.check and stale:
        print("out of date (run scripts/docs_links.py):", " ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
