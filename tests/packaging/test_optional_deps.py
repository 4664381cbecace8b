"""Outpost runs where ``publicsuffixlist`` is missing (Debian 12 does not
package it) unless DNS lists are configured; then it says what is missing."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = r"""
import sys
sys.modules["publicsuffixlist"] = None          # as if it were not installed
from outpost.config import load_config
config = load_config(sys.argv[1])
print("parsed", len(config.users))
import dns.resolver
from outpost.spam.dnslists import DnsListChecker, DnsListSettings
try:
    DnsListChecker(DnsListSettings(), dns.resolver.Resolver(configure=False))
except ValueError as exc:
    print("refused:", exc)
"""


def test_runs_without_publicsuffixlist_until_dns_lists_are_on():
    r = subprocess.run([sys.executable, "-c", SCRIPT, os.path.join(ROOT, "contrib", "outpost.yaml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("parsed ")
    assert lines[1] == ("refused: spam.dnslists needs the Python package publicsuffixlist "
                        "(pip install publicsuffixlist)")
