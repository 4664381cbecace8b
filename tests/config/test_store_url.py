"""The store URL has one parser (outpost.store.url): the configuration
refuses exactly the URLs that opening the store refuses."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from outpost.config import ConfigError, parse_config
from outpost.store import open_store
from outpost.store.url import StoreURL, StoreURLError, parse_store_url

BASE = textwrap.dedent("""\
    report_abuse_to: abuse@example.net
    domains: [example.com]
    users:
      - {name: web, type: ip, ips: [192.0.2.0/28], domains: [example.com]}
    """)

BAD = [
    "unix:///run/redis.sock",          # passed check-config, then `run` refused it
    "postgres://db/x",
    "sqlite://relative.db",
    "sqlite:///",
    "memory:extra",
    "redis://",
    "redis://host:99999/0",
    "redis://host:port/0",
    "redis://host:6379/zero",
]

GOOD = [
    ("memory:", "memory", None),
    ("memory", "memory", None),
    ("sqlite:///var/lib/outpost/state.db", "sqlite", "/var/lib/outpost/state.db"),
    ("redis://127.0.0.1:6379/0", "redis", None),
    ("redis://:secret@redis.example.net", "redis", None),
    ("rediss://user:pw@[::1]:6380/2", "rediss", None),
]


@pytest.mark.parametrize("url", BAD)
def test_config_refuses_what_open_store_refuses(url):
    with pytest.raises(ValueError):
        open_store(url)
    with pytest.raises(ConfigError) as exc:
        parse_config(f"store: '{url}'\n{BASE}", "t.yaml")
    assert str(exc.value).startswith("t.yaml:1: store: "), exc.value
    assert "is not a store URL" in str(exc.value)


@pytest.mark.parametrize("url,scheme,path", GOOD)
def test_parsed_store_urls(url, scheme, path):
    parsed = parse_store_url(url)
    assert isinstance(parsed, StoreURL) and parsed.scheme == scheme and parsed.path == path
    assert parse_config(f"store: '{url}'\n{BASE}", "t.yaml").store == parsed.text


def test_password_is_not_shown():
    with pytest.raises(StoreURLError) as exc:
        parse_store_url("redis://:hunter2@host:99999/0")
    assert "hunter2" not in str(exc.value)


def test_check_config_refuses_a_unix_socket_url(tmp_path):
    path = tmp_path / "outpost.yaml"
    path.write_text(f"store: unix:///run/redis.sock\n{BASE}")
    done = subprocess.run([sys.executable, "-m", "outpost", "check-config", "-c", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "store: 'unix:///run/redis.sock' is not a store URL: unknown scheme 'unix'" in done.stderr


@pytest.mark.parametrize("url", [
    "redis+sentinel://:hunter#2@10.0.0.1:26379/mymaster/0",
    "redis+sentinel://:hunter?2@10.0.0.1:26379/mymaster/0",
    "redis+sentinel://:hunter/2@10.0.0.1:26379/mymaster/0",
    "redis://:hunter#2@10.0.0.1:6379/0",
])
def test_a_password_the_redaction_could_not_see_is_refused_unshown(url: str) -> None:
    """A '#', '?' or '/' in the password: the store would read it, the
    redaction (RFC 3986) would not find it; such a URL is refused, and none
    of it is shown."""
    with pytest.raises(StoreURLError) as exc:
        parse_store_url(url)
    assert "hunter" not in str(exc.value) and "2@" not in str(exc.value)
    assert "percent-encode" in str(exc.value)
    assert parse_store_url(url.replace("hunter#2", "hunter%232").replace("hunter?2", "hunter%3F2")
                           .replace("hunter/2", "hunter%2F2"))


def test_an_unknown_scheme_does_not_show_the_password() -> None:
    with pytest.raises(StoreURLError) as exc:
        parse_store_url("rediss+sentinal://:s3cret@10.0.0.1:26379/mymaster/0")
    assert "s3cret" not in str(exc.value) and "unknown scheme 'rediss+sentinal'" in str(exc.value)


def test_redact_url_lives_beside_the_parser_and_is_still_importable_from_redis():
    from outpost.store import redact_url as from_package
    from outpost.store.redis import redact_url as from_redis
    from outpost.store.url import redact_url
    assert redact_url is from_redis is from_package
    assert redact_url("redis://:s3cret@h:1/0") == "redis://:***@h:1/0"
    # the dry run's line shows every scheme redacted (a Sentinel URL has passwords too)
    from outpost.cli import _shown_store
    shown = _shown_store("redis+sentinel://:pw@h1:1,h2:2/m/0?sentinel_password=sp")
    assert "pw" not in shown.replace("sentinel_password", "") and "sp" not in shown.split("?")[1]


def test_the_store_url_is_parsed_once_from_config_to_open_store(monkeypatch, tmp_path):
    import pickle

    import outpost.store
    import outpost.store.redis
    import outpost.store.url
    sentinel_url = "redis+sentinel://:pw@127.0.0.1:1,127.0.0.1:2/mymaster/0"
    configs = {url: parse_config(f"store: '{url}'\n{BASE}", "t.yaml")
               for url in ("memory:", f"sqlite://{tmp_path}/s.db", sentinel_url)}
    for url, config in configs.items():
        assert isinstance(config.store, StoreURL) and config.store == url and config.store.text == url
        assert pickle.loads(pickle.dumps(config.store)).scheme == config.store.scheme
    assert configs[sentinel_url].store.sentinel.service == "mymaster"
    assert configs[sentinel_url].store.redacted() == "redis+sentinel://:***@127.0.0.1:1,127.0.0.1:2/mymaster/0"

    def again(*args):
        raise AssertionError("the store URL was parsed again")
    monkeypatch.setattr(outpost.store, "parse_store_url", again)
    monkeypatch.setattr(outpost.store.url, "parse_store_url", again)
    monkeypatch.setattr(outpost.store.redis, "parse_sentinel_url", again)
    for config in configs.values():
        open_store(config.store, config.store_settings).close()   # redis connects lazily
    with pytest.raises(AttributeError):
        configs["memory:"].store.scheme = "sqlite"
