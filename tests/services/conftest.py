"""Fixtures of the real-Postfix harness for the tests in this folder."""

from tests.services.fixtures import postfix, smtp_sink
