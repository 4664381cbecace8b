"""Slow packaging tests run only with OUTPOST_SLOW_TESTS=1.  They are
deselected otherwise, not skipped: with CI=true a skip fails the run."""
import os

import pytest


def slow_enabled() -> bool:
    return os.environ.get("OUTPOST_SLOW_TESTS", "").strip() not in ("", "0")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs only with OUTPOST_SLOW_TESTS=1")


def pytest_collection_modifyitems(config, items):
    if slow_enabled():
        return
    here = os.path.dirname(os.path.abspath(__file__))
    keep, drop = [], []
    for item in items:
        slow = item.get_closest_marker("slow") is not None
        (drop if slow and str(item.fspath).startswith(here) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
