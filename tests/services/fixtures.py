"""pytest fixtures for the real-Postfix harness.

Import the ones you need into a conftest.py or test module::

    from tests.services.fixtures import smtp_sink, postfix  # noqa: F401

``smtp_sink`` and ``postfix`` are module-scoped: the tests of one module share
one sink and one Postfix (its milter socket is ``postfix.milter_socket``;
start your milter there).  ``sink`` is the same sink, emptied for each test.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.services.postfix import PostfixInstance
from tests.services.sink import SmtpSink


@pytest.fixture(scope="module")
def smtp_sink() -> Iterator[SmtpSink]:
    """An aiosmtpd sink on a free loopback port."""
    sink = SmtpSink().start()
    try:
        yield sink
    finally:
        sink.stop()


@pytest.fixture(scope="module")
def postfix(smtp_sink: SmtpSink) -> Iterator[PostfixInstance]:
    """A running Postfix relaying to ``smtp_sink``, milter at
    ``postfix.milter_socket`` (``/tmp/outpost-postfix-*/milter/outpost.sock``)."""
    instance = PostfixInstance(sink_port=smtp_sink.port)
    try:
        instance.start()
        yield instance
    finally:
        instance.cleanup()


@pytest.fixture
def sink(smtp_sink: SmtpSink, request: pytest.FixtureRequest) -> SmtpSink:
    """The module's ``smtp_sink``, emptied for this test.  With the module's
    ``postfix``, first wait until the messages of earlier tests are no longer
    in flight: one the sink has recorded may not be reported to Postfix yet."""
    if "postfix" in request.fixturenames:
        instance = request.getfixturevalue("postfix")
        if isinstance(instance, PostfixInstance):
            instance.drain()
    smtp_sink.clear()
    return smtp_sink
