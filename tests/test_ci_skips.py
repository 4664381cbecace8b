"""In CI (``CI=true``) a skipped test fails the run; elsewhere it stays a skip.
The missing corpus is the case that used to leave 20 tests skipped and the run
green."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = textwrap.dedent("""\
    import pytest
    from tests.corpus import HAM, corpus_message

    def test_needs_the_corpus():
        assert corpus_message("ham", HAM, "alice@example.com")

    @pytest.mark.skipif(True, reason="a daemon is missing")
    def test_marked_skip():
        pass

    @pytest.mark.xfail(reason="known", strict=True)
    def test_expected_failure():
        assert False

    def test_runs():
        pass
    """)


def run_probe(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["OUTPOST_CORPUS"] = str(tmp_path / "no-corpus-here")
    if ci is not None:
        env["CI"] = ci
    # tests/conftest.py loaded as a plugin: the probe lives outside tests/
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "tests.conftest", "-rfsx", "--rootdir", str(tmp_path),
                           str(tmp_path / "test_probe.py")],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


def test_skips_fail_in_ci(tmp_path):
    out = run_probe(tmp_path, "true")
    assert out.returncode == 1, out.stdout + out.stderr
    # a skip while running fails the test; one at setup (skipif) is an error
    assert "1 failed, 1 passed, 1 xfailed, 1 error" in out.stdout, out.stdout
    assert "SpamAssassin corpus not found" in out.stdout and "a daemon is missing" in out.stdout


def test_skips_stay_skips_elsewhere(tmp_path):
    out = run_probe(tmp_path, None)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed, 2 skipped, 1 xfailed" in out.stdout, out.stdout
