"""Outpost's metadata is in setup.cfg; this file only adds data files: the
manual pages and the MTA fragments and units of contrib/.

``outpost(8)`` and ``outpost.yaml(5)`` are built from docs/ with docutils
(``scripts/build_man.py``, a build requirement in pyproject.toml) into
build/man/ and installed under share/man.  Without docutils the package is
built without them (a warning says so); ``tests/docs`` checks they build."""
import os
import subprocess
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
PAGES = {"share/man/man8": ["build/man/outpost.8"], "share/man/man5": ["build/man/outpost.yaml.5"]}


def man_pages() -> list:
    script = os.path.join(ROOT, "scripts", "build_man.py")
    if not os.path.exists(script):
        return []
    try:
        import docutils  # noqa: F401  (only: is it there)
    except ImportError:
        print("setup.py: docutils is not installed; building without the manual pages",
              file=sys.stderr)
        return []
    r = subprocess.run([sys.executable, script, "--out", os.path.join(ROOT, "build", "man")],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        print(f"setup.py: the manual pages did not build, leaving them out:\n{r.stderr}",
              file=sys.stderr)
        return []
    return sorted(PAGES.items())


def contrib() -> list:
    """contrib/ under share/doc/outpost-milter/contrib (the sdist has it too)."""
    out = []
    for folder, _dirs, files in sorted(os.walk(os.path.join(ROOT, "contrib"))):
        rel = os.path.relpath(folder, ROOT)
        if files:
            out.append((os.path.join("share/doc/outpost-milter", rel),
                        sorted(os.path.join(rel, f) for f in files)))
    return out


setup(data_files=man_pages() + contrib())
