"""Fixtures of the spam tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.spam.helpers import find_corpus


@pytest.fixture(scope="session")
def corpus() -> Path:
    c = find_corpus()
    if c is None:
        pytest.skip("SpamAssassin corpus not found: set OUTPOST_CORPUS to the sa-2002 directory "
                    "(looked in ../shared/corpus and /work/shared/corpus)")
    return c
