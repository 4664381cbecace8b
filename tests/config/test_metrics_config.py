"""``metrics:``: parsed into MetricsSettings; off when absent."""

import pytest

from outpost.config import ConfigError, parse_config
from outpost.config.model import MetricsSettings

from .test_config import BASE


def parse(block: str):
    return parse_config(BASE + block, "m.yaml").metrics


def test_absent_or_disabled_is_off():
    assert parse("") is None
    assert parse("metrics: {enabled: false, listen: '127.0.0.1:1'}\n") is None


def test_defaults_and_values():
    assert parse("metrics: {}\n") == MetricsSettings(host="127.0.0.1", port=9467, top_users=20)
    assert parse("metrics:\n") == MetricsSettings()
    m = parse("metrics: {listen: '[::1]:9100', top_users: 5}\n")
    assert (m.host, m.port, m.top_users, m.listen) == ("::1", 9100, 5, "[::1]:9100")
    assert parse("metrics: {listen: 0.0.0.0:9467}\n").listen == "0.0.0.0:9467"


@pytest.mark.parametrize("block, error", [
    ("metrics: {listen: 9467}\n", "is not HOST:PORT"),
    ("metrics: {listen: 'example.net:9467'}\n", "is not HOST:PORT"),
    ("metrics: {listen: '127.0.0.1:70000'}\n", "is not HOST:PORT"),
    ("metrics: {listen: '999.1.1.1:80'}\n", "is not an IP address"),
    ("metrics: {top_users: -1}\n", "below the minimum"),
    ("metrics: {top_user: 3}\n", "did you mean 'top_users'"),
    ("metrics: [1]\n", "expected a mapping"),
])
def test_errors_are_located(block, error):
    with pytest.raises(ConfigError) as exc:
        parse(block)
    assert error in str(exc.value) and "metrics" in str(exc.value)
