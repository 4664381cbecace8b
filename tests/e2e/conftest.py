"""Shared fixtures of the end-to-end tests: a module-scoped SMTP sink and a
real Postfix relaying to it (tests/services/fixtures.py)."""

from tests.services.fixtures import postfix, smtp_sink  # noqa: F401
