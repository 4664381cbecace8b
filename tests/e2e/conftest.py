"""Shared fixtures of the end-to-end tests: a module-scoped SMTP sink (and
``sink``, the same emptied for each test) and a real Postfix relaying to it
(tests/services/fixtures.py)."""

from tests.services.fixtures import postfix, sink, smtp_sink
