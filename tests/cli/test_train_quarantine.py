"""``outpost train --from-quarantine``: the messages an operator released
from the quarantine (ham) and deleted from it (spam), kept in
``quarantine.training_dir``, learned once into the model in the store
(the store-backed learning complaints use too)."""

from __future__ import annotations

import textwrap
import time

import pytest

from outpost.cli import main
from outpost.config import load_config
from outpost.spam.bayes import Model
from outpost.spam.from_config import MODEL_BLOB
from outpost.store import open_store
from outpost.training import DecisionSpool
from tests.corpus import HAM, SPAM, corpus_message


@pytest.fixture
def setup(tmp_path):
    secret = tmp_path / "secret"
    assert main(["secret", str(secret)]) == 0
    cfg = tmp_path / "outpost.yaml"
    cfg.write_text(textwrap.dedent(f"""\
        secret_file: {secret}
        store: sqlite:///{tmp_path}/state.db
        report_abuse_to: abuse@example.net
        domains: [example.com]
        users:
          - {{name: alice, type: login, logins: [alice@example.com], domains: [example.com]}}
        quarantine: {{training_dir: {tmp_path}/training, keep: 7d, max_kept: 50}}
        """))
    return tmp_path, cfg, DecisionSpool(load_config(str(cfg)).quarantine)


def model(tmp_path) -> Model:
    store = open_store(f"sqlite:///{tmp_path}/state.db")
    try:
        blob = store.get_blob(MODEL_BLOB)
    finally:
        store.close()
    return Model.from_bytes(blob) if blob else Model()


def test_released_is_ham_deleted_is_spam_each_learned_once(setup, capsys):
    tmp, cfg, spool = setup
    spool.record("4AbC1", corpus_message("ham", HAM, "alice@example.com"), spam=False)
    spool.record("4AbC2", corpus_message("spam", SPAM, "alice@example.com"), spam=True)
    spool.record("4AbC3", corpus_message("spam", SPAM, "bob@example.com"), spam=True)
    assert main(["train", "--from-quarantine", "-c", str(cfg)]) == 0
    assert "learned 1 released message(s) as ham and 2 deleted message(s) as spam" in capsys.readouterr().out
    got = model(tmp)
    assert (got.nham, got.nspam) == (1, 2) and len(got) > 20
    assert spool.pending() == []
    assert len(list((tmp / "training" / "learned" / "deleted").glob("*.eml"))) == 2
    # nothing new: nothing learned twice
    assert main(["train", "--from-quarantine", "-c", str(cfg)]) == 0
    assert "learned 0 released message(s) as ham and 0 deleted" in capsys.readouterr().out
    assert (model(tmp).nham, model(tmp).nspam) == (1, 2)
    # a later decision adds to the model
    spool.record("4AbC4", corpus_message("ham", HAM, "bob@example.com"), spam=False)
    assert main(["train", "--from-quarantine", "-c", str(cfg)]) == 0
    assert (model(tmp).nham, model(tmp).nspam) == (2, 2)


def test_a_failed_learning_leaves_the_messages_to_learn(setup, capsys):
    """The stored model cannot be read (the learning fails after the
    messages were taken): they are pending again, learned by the next run."""
    tmp, cfg, spool = setup
    spool.record("4AbC1", corpus_message("ham", HAM, "alice@example.com"), spam=False)
    spool.record("4AbC2", corpus_message("spam", SPAM, "alice@example.com"), spam=True)
    store = open_store(f"sqlite:///{tmp}/state.db")
    store.put_blob(MODEL_BLOB, b"not a model")
    code = main(["train", "--from-quarantine", "-c", str(cfg)])
    assert code == 1 and "not an Outpost Bayes model" in capsys.readouterr().err
    assert sorted(spam for _, spam in spool.pending()) == [False, True]     # still to learn
    store.put_blob(MODEL_BLOB, Model().to_bytes())
    store.close()
    assert main(["train", "--from-quarantine", "-c", str(cfg)]) == 0
    assert (model(tmp).nham, model(tmp).nspam) == (1, 1)


def test_kept_messages_are_bounded_in_number_and_age(setup):
    tmp, cfg, spool = setup
    for i in range(60):
        spool.record(f"Q{i:04d}", b"Subject: %d\r\n\r\nbody\r\n" % i, spam=True)
    names = sorted(p.name for p, _ in spool.pending())
    assert len(names) == 50 and names[0].endswith("-Q0010.eml")      # max_kept: the oldest went
    (spool.root / "released").mkdir()
    old = spool.root / "released" / f"{time.time_ns() - 8 * 86400 * 10**9}-QOLD.eml"
    old.write_bytes(b"Subject: old\r\n\r\n")
    spool.prune()
    assert not old.exists()                                           # keep: 7d


def test_options_are_checked(setup, capsys):
    tmp, cfg, _ = setup
    assert main(["train", "--from-quarantine", "--spam", str(tmp), "-c", str(cfg)]) == 2
    assert main(["train", "--spam", str(tmp), "-c", str(cfg)]) == 2
    assert "--from-quarantine alone" in capsys.readouterr().err
