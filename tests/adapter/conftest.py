"""What every adapter test drives: a runtime over the core tests' config,
with a memory store."""

import pytest

from outpost.config import parse_config
from outpost.core.idtoken import TokenCodec
from outpost.core.policy import Policy
from outpost.runtime import Runtime
from outpost.store.memory import MemoryStore

from ..core.conftest import CONFIG, SECRET


@pytest.fixture
def memory_runtime():
    config = parse_config(CONFIG)
    store = MemoryStore()
    codec = TokenCodec(SECRET)
    yield Runtime(config=config, store=store, codec=codec, policy=Policy(config, store, codec))
    store.close()
