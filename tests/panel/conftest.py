"""Fixtures of the panel tests: a configuration with panel accounts (cheap
scrypt hashes), a memory store, the Flask app and logged-in test clients."""

from __future__ import annotations

import re
from typing import Callable

import pytest

from outpost.config import parse_config
from outpost.core.idtoken import TokenCodec
from outpost.panel.auth import hash_password
from outpost.store.memory import MemoryStore

PASSWORD = "correct horse battery"
SECRET = b"s" * 32


def panel_yaml(extra: str = "", spool: str = "", **panel_keys: object) -> str:
    h = hash_password(PASSWORD, n=16)
    keys = "".join(f"  {k}: {v}\n" for k, v in panel_keys.items())
    reports = (f"reports: {{spool_dir: {spool}, from_addr: outpost@relay.example, "
               f"smtp: {{host: 127.0.0.1, port: 1}}}}\n") if spool else "reports: {enabled: false}\n"
    return f"""
report_abuse_to: abuse@example.net
store: memory
domains: [{{name: shop.example}}, {{name: other.example}}]
users:
  - name: webfarm
    type: login
    logins: [alice@shop.example]
    domains: [shop.example]
    limits: {{messages: ["5/1h", "100/1d"]}}
    user_limits: {{messages: ["50/1h"]}}
  - {{name: acme, type: ip, ips: [192.0.2.0/24], domains: [other.example]}}
{reports}panel:
  login_attempts: 3
{keys}  users:
    - {{name: ops, role: operator, password_hash: "{h}"}}
    - {{name: eve, role: viewer, password_hash: "{h}"}}
{extra}"""


@pytest.fixture
def config():
    return parse_config(panel_yaml())


@pytest.fixture
def make_app(config) -> Callable:
    from outpost.panel.app import create_app
    from outpost.panel.data import Panel

    def make(cfg=None, store=None):
        cfg = cfg or config
        store = store or MemoryStore(cfg.store_settings)
        codec = TokenCodec(SECRET)
        panel = Panel(cfg, store, codec)
        app = create_app(cfg, panel)
        app.testing = True
        return app, panel
    return make


@pytest.fixture
def app_panel(make_app):
    return make_app()


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "no CSRF token in the page"
    return m.group(1)


def log_in(client, name: str, password: str = PASSWORD):
    page = client.get("/login")
    return client.post("/login", data={"name": name, "password": password,
                                       "csrf": csrf_of(page.get_data(as_text=True))})


@pytest.fixture
def operator(app_panel):
    app, _ = app_panel
    client = app.test_client()
    assert log_in(client, "ops").status_code == 302
    return client


@pytest.fixture
def viewer(app_panel):
    app, _ = app_panel
    client = app.test_client()
    assert log_in(client, "eve").status_code == 302
    return client
