"""The Redis store behind Redis Sentinel (``redis+sentinel://``): the URL,
and a real failover (master + replica + 3 Sentinels on loopback, master
SIGKILLed) that the store follows by itself.

The whole store contract also runs through Sentinel: ``sentinel`` is one of
the backends of tests/store/conftest.py."""

from __future__ import annotations

import time
from typing import Iterator

import pytest
import redis

from outpost.config import ConfigError, parse_config
from outpost.store import Bucket, StoreError, StoreSettings, open_store
from outpost.store.redis import RedisStore, SentinelTarget, parse_sentinel_url, redact_url
from outpost.store.resilient import ResilientStore
from tests.services.sentinel import SentinelCluster

CONFIG = """\
report_abuse_to: abuse@example.net
domains: [example.com]
users:
  - name: alice
    type: login
    logins: [alice@example.com]
    domains: [example.com]
"""


# -- the URL ------------------------------------------------------------------------------------

def test_sentinel_url_is_parsed() -> None:
    assert parse_sentinel_url("redis+sentinel://:pw@h1:26380,h2,[::1]:5000/mymaster/3") == \
        SentinelTarget(sentinels=(("h1", 26380), ("h2", 26379), ("::1", 5000)),
                       service="mymaster", db=3, password="pw")
    t = parse_sentinel_url("rediss+sentinel://u:p%40ss@h1/svc?sentinel_password=sp"
                           "&ssl_ca_certs=/etc/ca.pem")
    assert (t.tls, t.db, t.username, t.password) == (True, 0, "u", "p@ss")
    assert dict(t.options) == {"sentinel_password": "sp", "ssl_ca_certs": "/etc/ca.pem"}
    assert "p@ss" not in repr(t) and "sp" not in repr(t).replace("sentinels", "")


@pytest.mark.parametrize("url, says", [
    ("redis+sentinel://h1:26379/", "name the master"),
    ("redis+sentinel://h1:26379", "name the master"),
    ("redis+sentinel://h1:x/m/0", "bad Sentinel address 'h1:x'"),
    ("redis+sentinel://h1:0/m/0", "bad Sentinel address"),
    ("redis+sentinel://h1,,h2/m/0", "bad Sentinel address ''"),
    ("redis+sentinel://h1/m/zero", "/SERVICE/DB (DB a number)"),
    ("redis+sentinel://h1/m/0/1", "/SERVICE/DB"),
    ("redis+sentinel://:secret@h1/m/0?password=x", "unknown parameter(s) password"),
    ("rediss+sentinel://h1/m/0?ssl_cert_reqs=maybe", "ssl_cert_reqs must be required, optional"),
])
def test_bad_sentinel_urls_are_refused_without_showing_the_password(url: str, says: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_sentinel_url(url)
    assert says in str(exc.value)
    assert "secret" not in str(exc.value)
    with pytest.raises(ValueError):                  # open_store refuses it the same way
        open_store(url)


def test_sentinel_passwords_are_redacted() -> None:
    assert redact_url("redis+sentinel://:pw@h1:1,h2:2/m/0?sentinel_password=sp&ssl_cert_reqs=none") \
        == "redis+sentinel://:***@h1:1,h2:2/m/0?sentinel_password=***&ssl_cert_reqs=none"
    assert redact_url("redis+sentinel://h1:1/m/0") == "redis+sentinel://h1:1/m/0"


def test_check_config_accepts_the_sentinel_url_and_explains_a_bad_one() -> None:
    url = "rediss+sentinel://:pw@10.0.0.1:26379,10.0.0.2:26379/mymaster/0"
    assert parse_config(f"store: {url}\n" + CONFIG).store == url
    with pytest.raises(ConfigError) as exc:
        parse_config("store: 'redis+sentinel://:secret@10.0.0.1:26379'\n" + CONFIG, "t.yaml")
    assert ("t.yaml:1: store: 'redis+sentinel://:***@10.0.0.1:26379' is not a store URL: "
            "name the master") in str(exc.value)
    assert "secret" not in str(exc.value)


# -- a real failover -----------------------------------------------------------------------------

@pytest.fixture
def cluster() -> Iterator[SentinelCluster]:
    """A cluster of its own: this test fails it over."""
    with SentinelCluster() as c:
        yield c


def test_store_follows_a_failover_and_keeps_what_was_replicated(cluster: SentinelCluster) -> None:
    """SIGKILL the master: the store serves from process memory only until
    the Sentinels have promoted the replica (within a second of it, with
    the default ``retry_interval`` of 5 s: the background check of a
    store that follows a failover), then goes on against the new master,
    where the counts and the lock written before the kill are."""
    settings = StoreSettings(key_prefix="fo:", on_store_error="local")
    assert settings.retry_interval == 5.0            # the default, not a test-only short one
    store = open_store(cluster.url, settings)
    assert isinstance(store, ResilientStore) and isinstance(store.primary, RedisStore)
    bucket = [Bucket("alice/alice@example.com", 3, 600.0)]
    assert [store.hit(bucket).allowed for _ in range(4)] == [True, True, True, False]
    store.set_lock("bob/bob@example.com", "abuse", None, by="test")
    assert store.conn_acquire("192.0.2.9", 5, "relay1:100:1") == (True, 1)
    assert not store.degraded
    assert cluster.replica_in_sync()                  # nothing of the above can be lost

    killed = cluster.kill_master()
    promoted = fell_back = back = None
    local_admitted = 0
    slowest = 0.0
    deadline = killed + 30
    while back is None:
        assert time.monotonic() < deadline, "the store did not come back to the new master"
        if promoted is None and cluster.master_port() == cluster.replica.port:
            promoted = time.monotonic()
        started = time.monotonic()
        result = store.hit(bucket)
        slowest = max(slowest, time.monotonic() - started)
        if store.degraded:
            fell_back = fell_back or time.monotonic()
            local_admitted += result.allowed
        elif fell_back is not None:
            back = time.monotonic()
        time.sleep(0.02)
    if promoted is None:
        promoted = cluster.wait_for_failover()
    print(f"\nfailover: replica promoted {promoted - killed:.2f} s after the kill; "
          f"the store served from memory for {back - fell_back:.2f} s, "
          f"{back - promoted:+.2f} s after the promotion; {local_admitted} admitted locally; "
          f"slowest call {slowest:.3f} s")
    # local memory admits at most the limit (one process) while the failover lasts
    assert local_admitted <= 3
    # back within a small bound of the promotion, not up to retry_interval (5 s) later
    assert back - promoted <= 1.5
    # the new master has everything written before the kill
    assert store.peek(bucket)[0].used == 3 and not store.hit(bucket).allowed
    lock = store.get_lock("bob/bob@example.com")
    assert lock is not None and lock.reason == "abuse"
    assert store.conn_count("192.0.2.9") == 1
    assert not store.degraded and store.outages == 1
    new = redis.Redis("127.0.0.1", cluster.replica.port)
    try:
        assert new.info("replication")["role"] == "master"
        assert new.exists("fo:lock:bob/bob@example.com")
    finally:
        new.close()
    store.close()


def test_rediss_sentinel_speaks_tls_to_the_master() -> None:
    """``rediss+sentinel://``: the Sentinels answer in plain text, the master
    only over TLS (checked against ``ssl_ca_certs``); the plain scheme on
    the same cluster cannot talk to it."""
    with SentinelCluster(tls=True) as c:
        assert c.url.startswith("rediss+sentinel://")
        store = open_store(c.url, StoreSettings(key_prefix="tls:", on_store_error="tempfail"))
        bucket = [Bucket("alice/alice@example.com", 1, 60.0)]
        assert [store.hit(bucket).allowed for _ in range(2)] == [True, False]
        store.close()
        plain = open_store(c.url.replace("rediss+", "redis+").split("?")[0],
                           StoreSettings(key_prefix="tls:", on_store_error="tempfail"))
        with pytest.raises(StoreError):
            plain.hit(bucket)
        plain.close()
        wrong_ca = open_store(c.url.split("?")[0], StoreSettings(on_store_error="tempfail"))
        with pytest.raises(StoreError, match="certificate verify failed"):
            wrong_ca.hit(bucket)                  # no CA given: the self-signed one is refused
        wrong_ca.close()


def test_passwords_of_redis_and_of_the_sentinels() -> None:
    """Redis servers with ``requirepass`` (the password in the URL) and
    Sentinels with one of their own (``?sentinel_password=``); without
    either the store cannot work."""
    with SentinelCluster(password="redis-pw", sentinel_password="sentinel-pw") as c:
        bucket = [Bucket("alice/alice@example.com", 5, 60.0)]
        settings = StoreSettings(key_prefix="pw:", on_store_error="tempfail")
        store = open_store(c.url, settings)
        assert store.hit(bucket).allowed and store.peek(bucket)[0].used == 1
        assert "redis-pw" not in store.url and "sentinel-pw" not in store.url
        store.close()
        for url in (c.url.replace("sentinel_password=sentinel-pw", "sentinel_password=wrong"),
                    c.url.replace(":redis-pw@", "")):
            other = open_store(url, settings)
            with pytest.raises(StoreError) as exc:
                other.hit(bucket)
            assert "redis-pw" not in str(exc.value) and "sentinel-pw" not in str(exc.value)
            other.close()


def test_check_config_strict_asks_the_store_through_the_sentinels(
        sentinel_cluster: SentinelCluster, tmp_path, capsys: pytest.CaptureFixture) -> None:
    from outpost.cli import main
    from outpost.core.idtoken import new_secret
    secret = tmp_path / "secret"
    secret.write_bytes(new_secret())
    secret.chmod(0o600)
    head = f"secret_file: {secret}\nreports: {{enabled: false}}\n"
    config = tmp_path / "outpost.yaml"
    config.write_text(f"store: '{sentinel_cluster.url}'\n" + head + CONFIG)
    assert main(["check-config", "--strict", "-c", str(config)]) == 0
    # a master name the Sentinels do not monitor: the store does not answer
    # (and the passwords in the URL are not shown)
    url = sentinel_cluster.url.replace("/mymaster/", "/nosuch/").replace(
        "redis+sentinel://", "redis+sentinel://:topsecret@") + "?sentinel_password=alsosecret"
    config.write_text(f"store: '{url}'\n" + head + CONFIG)
    capsys.readouterr()
    assert main(["check-config", "--strict", "-c", str(config)]) == 3
    err = capsys.readouterr().err
    assert "No master found for 'nosuch'" in err
    assert "secret" not in err, err
