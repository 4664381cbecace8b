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
