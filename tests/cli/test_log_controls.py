"""Log lines carry no controls a client sent (CR, LF, NUL, C1, U+2028/2029):
one record is one line, whatever the values it logs."""

import logging

from outpost.cli import LogFormatter
from outpost.core.headers import CONTROL


def record(msg, *args, exc_info=None):
    return logging.LogRecord("outpost.policy", logging.WARNING, __file__, 1, msg, args, exc_info)


def test_values_with_controls_log_one_clean_line():
    out = LogFormatter().format(record("locked %s: %s", "web/x\x85\u2028\r\nFAKE 250 ok\x1b[2J@example.com", "r"))
    assert "\n" not in out and not CONTROL.search(out)
    assert out.endswith("locked web/x    FAKE 250 ok [2J@example.com: r")


def test_the_line_before_a_traceback_is_cleaned_too():
    try:
        raise ValueError("boom")
    except ValueError:
        import sys
        rec = record("error for %s", "a\u2029b\nc", exc_info=sys.exc_info())
    first, rest = LogFormatter().format(rec).split("\n", 1)
    assert first.endswith("error for a b c") and "Traceback" in rest
