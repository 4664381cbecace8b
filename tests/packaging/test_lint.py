"""Lint and types are part of the test command: ``make test`` (which ``.ci/run``
runs) runs ruff and mypy before pytest, and nothing in the repository reaches
for ``outpost`` or the harness through ``sys.path`` edits."""
import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_make_test_runs_ruff_and_mypy_before_the_suite():
    out = subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, env=dict(os.environ, MAKEFLAGS=""))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()

    def first(word: str) -> int:
        return next(i for i, line in enumerate(lines) if re.search(rf"-m {word}\b", line))

    assert first("ruff") < first("mypy") < first("pytest"), lines


def test_ci_runs_make_test():
    run = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^exec make test$", run, re.M), run


_SYS_PATH_EDIT = re.compile(r"sys\.path(\.insert|\.append|\.extend|\s*\[[^\]]*\]\s*=|\s*\+=)")


def test_no_sys_path_edits():
    found = []
    for folder in ("milter", "tests", "bench", "scripts", "tools"):
        for path in (ROOT / folder).rglob("*.py"):
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if _SYS_PATH_EDIT.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert found == []
