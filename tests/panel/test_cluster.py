"""A panel on one relay sees the whole cluster: two relays' workers
(their own StatsRecorder and Redis connection) add to one real Redis, and the
panel's pages, reading through a third connection, show both."""

from __future__ import annotations

import uuid

import pytest

from outpost.core.types import Action, Decision, Message, Reply
from outpost.stats import StatsRecorder
from outpost.store import StoreSettings, open_store
from tests.services.redis import RedisServer

from .conftest import csrf_of, log_in


@pytest.fixture(scope="module")
def redis_url():
    with RedisServer() as srv:
        yield srv.url


def test_pages_show_every_relays_traffic(redis_url, config, make_app) -> None:
    settings = StoreSettings(key_prefix=f"t{uuid.uuid4().hex[:8]}:", on_store_error="tempfail")
    relays = [open_store(redis_url, settings) for _ in range(2)]
    panel_store = open_store(redis_url, settings)
    try:
        for n, store in enumerate(relays):
            rec = StatsRecorder(store)
            msg = Message(user_name="webfarm", identity=f"relay{n}@shop.example",
                          recipients=["x@dest.example"], token=f"tok{n}")
            rec.record(msg, Decision(Action.ACCEPT), f"4QA{n}")
            rec.record(msg, Decision(Action.REJECT, Reply("550", "5.7.1", "spam"), "spam"), f"4QR{n}")
            assert rec.flush()
        app, _ = make_app(store=panel_store)
        c = app.test_client()
        log_in(c, "ops")
        page = c.get("/blocked").get_data(as_text=True)
        assert "4QR0" in page and "4QR1" in page and "4QA0" not in page
        page = c.get("/").get_data(as_text=True)
        assert "accepted (2)" in page and "refused (2)" in page
        page = c.get("/users/webfarm").get_data(as_text=True)
        assert "relay0@shop.example" in page and "relay1@shop.example" in page
        # a lock made in the panel is the relays' lock
        page = c.get("/identity/webfarm/relay1@shop.example").get_data(as_text=True)
        c.post("/lock", data={"csrf": csrf_of(page), "target": "webfarm/relay1@shop.example",
                              "action": "lock", "reason": "complaint"})
        assert relays[0].get_lock("webfarm/relay1@shop.example") is not None
    finally:
        for store in relays + [panel_store]:
            store.close()
