"""Fixtures of the spam tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.spam.helpers import require_corpus


@pytest.fixture(scope="session")
def corpus() -> Path:
    return require_corpus()
