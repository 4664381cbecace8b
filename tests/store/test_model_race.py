"""Two learners writing the trained model at the same moment (``outpost
feedback`` learning from a complaint while ``outpost train
--from-quarantine`` runs, on one host or two): both updates survive.

Real processes, started together, each learning its messages one at a
time into the same store; before ``Store.swap_blob`` the plain
read-modify-write lost 9 to 24 of the 60 in three runs out of four here."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from outpost.spam.bayes import Model
from outpost.spam.from_config import MODEL_BLOB
from outpost.store import StoreSettings, open_store
from outpost.store.base import StoreError
from outpost.store.memory import MemoryStore
from outpost.store.wrapper import StoreWrapper
from outpost.training import MAX_SWAPS, learn
from tests.store.conftest import backend_url

PER_PROCESS = 30

LEARNER = textwrap.dedent("""\
    import os, sys, time
    from outpost.store import StoreSettings, open_store
    from outpost.training import learn
    url, prefix, start, spam, n = sys.argv[1:6]
    store = open_store(url, StoreSettings(key_prefix=prefix, on_store_error="tempfail"))
    while not os.path.exists(start):
        time.sleep(0.001)
    for i in range(int(n)):
        body = f"Subject: m{i}\\r\\n\\r\\nmessage {i} of learner {spam} " * 20
        learn(store, [(body.encode(), spam == "spam")])
    store.close()
    """)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_two_processes_learning_at_once_lose_nothing(backend: str, request, tmp_path) -> None:
    url = backend_url(backend, request, tmp_path)
    if backend == "sqlite":
        (tmp_path / "state").mkdir()
    prefix = f"t{uuid.uuid4().hex[:10]}:"
    start = tmp_path / "start"
    procs = [subprocess.Popen([sys.executable, "-c", LEARNER, url, prefix, str(start), kind,
                               str(PER_PROCESS)], stderr=subprocess.PIPE)
             for kind in ("spam", "ham")]
    time.sleep(1.0)                       # both imported and waiting
    start.touch()
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    store = open_store(url, StoreSettings(key_prefix=prefix, on_store_error="tempfail"))
    try:
        blob = store.get_blob(MODEL_BLOB)
    finally:
        store.close()
    assert blob is not None
    model = Model.from_bytes(blob)
    assert (model.nspam, model.nham) == (PER_PROCESS, PER_PROCESS)


class _Interleaved(StoreWrapper):
    """Another learner writes the model between this one's read and write,
    ``times`` times."""

    def __init__(self, inner, times: int) -> None:
        super().__init__(inner)
        self.times = times
        self.swaps = 0

    def swap_blob(self, name, expected, data) -> bool:
        self.swaps += 1
        if self.times:
            self.times -= 1
            learn(self.inner, [(b"Subject: other\r\n\r\nthe other learner's ham\r\n", False)])
        return self.inner.swap_blob(name, expected, data)


def test_a_learner_that_lost_the_race_learns_again_from_the_newer_model() -> None:
    store = _Interleaved(MemoryStore(), times=2)
    assert learn(store, [(b"Subject: cheap\r\n\r\nbuy now\r\n", True)]) == 1
    assert store.swaps == 3
    model = Model.from_bytes(store.get_blob(MODEL_BLOB) or b"")
    assert (model.nspam, model.nham) == (1, 2)


def test_a_model_that_keeps_changing_is_a_store_error() -> None:
    store = _Interleaved(MemoryStore(), times=MAX_SWAPS)
    with pytest.raises(StoreError, match="changed"):
        learn(store, [(b"Subject: cheap\r\n\r\nbuy now\r\n", True)])
    model = Model.from_bytes(store.get_blob(MODEL_BLOB) or b"")
    assert (model.nspam, model.nham) == (0, MAX_SWAPS)         # nothing half-learned
