import textwrap

import pytest

from outpost.config import parse_config
from outpost.core.idtoken import TokenCodec
from outpost.core.policy import Policy
from outpost.store.memory import MemoryStore

SECRET = b"0123456789abcdef0123456789abcdef"

CONFIG = textwrap.dedent("""\
    hostname: relay.example.net
    report_abuse_to: abuse@example.net
    connection_limit: 3
    domains: [example.com, example.org, shop.example]
    defaults:
      limits: {messages: ["5/1m"], max_recipients: 4}
      lock: {after_limit_hits: 2, window: 10m, duration: 1h, max_auto_unlocks: 1}
    users:
      - name: webfarm
        type: ip
        ips: [192.0.2.0/28, "2001:db8::/64"]
        domains: [example.com]
        identity_headers:
          - {header: X-AuthUser}
          - {header: X-PHP-Originating-Script, regex: '^(\\d+):', remove: true}
      - name: bigfarm
        type: ip
        ips: [192.0.2.0/24]
        domains: [shop.example]
        connection_limit: 5
      - name: example.org
        type: domain
      - name: alice
        type: login
        logins: [alice@example.com]
        domains: [example.com]
      - name: watched
        type: login
        logins: [eve@example.com]
        domains: [example.com]
        mode: monitor
    """)


@pytest.fixture
def config():
    return parse_config(CONFIG, "core.yaml")


@pytest.fixture
def store():
    s = MemoryStore()
    yield s
    s.close()


@pytest.fixture
def codec():
    return TokenCodec(SECRET)


@pytest.fixture
def policy(config, store, codec):
    return Policy(config, store, codec, clock=lambda: 1_700_000_000)
