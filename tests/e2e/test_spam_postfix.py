"""Spam verdicts end to end: real Postfix → Outpost (built-in engine, real
spamd as an extra engine) → sink; quarantine in Postfix's hold queue."""

from __future__ import annotations

import json
import subprocess
import textwrap

import pytest

from outpost.core.idtoken import TokenCodec, read_secret
from tests.corpus import HAM, SPAM, corpus_message
from tests.services.smtp import build_message, send
from tests.services.spamd import Spamd

from .outpost_proc import Outpost

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def config(spamd_port: int) -> str:
    return textwrap.dedent(f"""\
        hostname: relay.example.net
        report_abuse_to: abuse@example.net
        domains: [example.com]
        defaults:
          lock: {{after_spam: 5, window: 10m, duration: 1h}}
        spam:
          spamassassin: {{host: 127.0.0.1, port: {spamd_port}, timeout: 5s, weight: 1.0, on_error: tempfail}}
        users:
          - name: alice
            type: login
            logins: [alice@example.com, spammer@example.com]
            domains: [example.com]
          - name: holder
            type: login
            logins: [holder@example.com]
            domains: [example.com]
            spam: {{on_spam: quarantine}}
        """)


@pytest.fixture(scope="module")
def spamd():
    daemon = Spamd().start()
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def outpost(postfix, spamd):
    proc = Outpost(postfix.milter_socket, config(spamd.port)).start()
    yield proc
    proc.stop()


def submit(postfix, login, message, rcpts=("bob@dest.example",)):
    return send(postfix.submission_port, xclient={"LOGIN": login}, mail_from=login,
                rcpt_tos=list(rcpts), message=message)


def cli(outpost, *args):
    return subprocess.run([*outpost.proc.argv[:3], *args], capture_output=True, text=True,
                          env=outpost.proc.env, timeout=60)


def test_corpus_spam_is_rejected_with_reference(postfix, outpost, sink):
    r = submit(postfix, "alice@example.com", corpus_message("spam", SPAM, "alice@example.com"))
    assert (r.stage, r.code) == ("end", 550), r
    assert r.text.startswith("5.7.1 Message rejected as spam; reference ")
    token = r.text.rsplit(" ", 1)[1]
    origin = TokenCodec(read_secret(str(outpost.secret_file))).open(token)
    assert (origin.user, origin.identity) == ("alice", "alice@example.com")
    assert sink.messages == []


def test_ham_arrives_classified_ham(postfix, outpost, sink):
    r = submit(postfix, "alice@example.com", corpus_message("ham", HAM, "alice@example.com"))
    assert r.accepted, r
    [m] = sink.wait_for(1)
    assert m.headers("X-Outpost-Class") == ["ham"]
    assert float(m.headers("X-Outpost-Score")[0]) < 3.0
    assert "spamassassin(" in m.headers("X-Outpost-Evidence")[0] or "bayes_ham(" in m.headers("X-Outpost-Evidence")[0]


def test_spamassassin_joins_the_score(postfix, outpost, sink):
    msg = build_message("alice@example.com", "bob@dest.example", subject="test",
                        body=f"Testing the relay.\n{GTUBE}\n")
    r = submit(postfix, "alice@example.com", msg)
    assert (r.stage, r.code) == ("end", 550), r


def test_quarantined_message_is_held_and_release_delivers_it(postfix, outpost, sink):
    r = submit(postfix, "holder@example.com", corpus_message("spam", SPAM, "holder@example.com"))
    assert r.accepted, r
    qid = r.queue_id
    assert qid in postfix.hold_queue()
    listing = cli(outpost, "quarantine", "list", "--postfix-config", str(postfix.config_dir))
    assert listing.returncode == 0 and qid in listing.stdout and "X-Outpost-Class: spam" in listing.stdout
    listing = cli(outpost, "quarantine", "list", "--json", "--postfix-config", str(postfix.config_dir))
    [held] = [h for h in json.loads(listing.stdout)["held"] if h["queue_id"] == qid]
    assert held["sender"] == "holder@example.com" and held["recipients"] == ["bob@dest.example"]
    assert ["X-Outpost-Class", "spam"] in held["outpost_headers"] and held["size"] > 0
    assert sink.messages == []
    # the operator's decisions are kept for training (-c: quarantine.training_dir)
    training = outpost.dir / "training"
    cfg = outpost.dir / "cli.yaml"
    cfg.write_text(outpost.config_path.read_text() + f"quarantine: {{training_dir: {training}}}\n")
    out = cli(outpost, "quarantine", "release", qid, "--postfix-config", str(postfix.config_dir),
              "-c", str(cfg))
    assert out.returncode == 0, out.stderr
    assert "kept as ham" in out.stdout
    postfix.flush()
    [m] = sink.wait_for(1, timeout=30)
    assert m.headers("X-Outpost-Class") == ["spam"] and m.headers("X-Outpost-User") == ["holder"]
    [kept] = (training / "released").glob(f"*-{qid}.eml")
    copy = kept.read_bytes().replace(b"\r\n", b"\n")
    assert b"X-Outpost-Class: spam" in copy
    assert m.data.replace(b"\r\n", b"\n").rstrip()[-300:] in copy          # the body, whole
    r = submit(postfix, "holder@example.com", corpus_message("spam", SPAM, "holder@example.com"))
    out = cli(outpost, "quarantine", "delete", r.queue_id, "--postfix-config",
              str(postfix.config_dir), "-c", str(cfg))
    assert out.returncode == 0 and "kept as spam" in out.stdout, out.stderr
    assert r.queue_id not in postfix.hold_queue()
    out = cli(outpost, "train", "--from-quarantine", "-c", str(cfg))
    assert out.returncode == 0, out.stderr
    assert "learned 1 released message(s) as ham and 1 deleted message(s) as spam" in out.stdout


def test_five_spam_verdicts_lock_the_identity(postfix, outpost, sink):
    spam = corpus_message("spam", SPAM, "spammer@example.com")
    for _ in range(5):
        assert submit(postfix, "spammer@example.com", spam).code == 550
    r = submit(postfix, "spammer@example.com", corpus_message("ham", HAM, "spammer@example.com"))
    assert (r.stage, r.code) == ("rcpt", 451), r
    assert "Sending from spammer@example.com is suspended because of suspected abuse" in r.text
    locks = cli(outpost, "locks", "-c", str(outpost.config_path))
    assert "alice/spammer@example.com" in locks.stdout and "5 spam verdicts" in locks.stdout


def test_spamd_down_tempfails_and_loses_nothing(postfix, outpost, spamd, sink):
    spamd.kill()
    try:
        r = submit(postfix, "alice@example.com", corpus_message("ham", HAM, "alice@example.com"))
        assert (r.stage, r.code) == ("end", 451), r
        assert "4.3.0 Message could not be scanned" in r.text
        assert sink.messages == []
    finally:
        spamd.start()
    r = submit(postfix, "alice@example.com", corpus_message("ham", HAM, "alice@example.com"))
    assert r.accepted, r
    assert len(sink.wait_for(1)) == 1
