"""outpost scan and outpost train, run as a user would (the CLI entry point)."""

import json
import textwrap

import pytest

from outpost.cli import main
from outpost.spam.from_config import MODEL_BLOB
from outpost.store import open_store
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
        """))
    return tmp_path, cfg


def test_scan_prints_decision_class_checks_and_headers(setup, capsys):
    tmp, cfg = setup
    spam = tmp / "spam.eml"
    spam.write_bytes(corpus_message("spam", SPAM, "alice@example.com"))
    code = main(["scan", str(spam), "-c", str(cfg), "--login", "alice@example.com", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1
    assert out["action"] == "reject" and out["class"] == "spam" and out["user"] == "alice"
    assert out["reply"].startswith("550 5.7.1 Message rejected as spam; reference ")
    assert any(c["name"] == "bayes_spam" and c["points"] > 0 for c in out["checks"])

    ham = tmp / "ham.eml"
    ham.write_bytes(corpus_message("ham", HAM, "alice@example.com"))
    code = main(["scan", str(ham), "-c", str(cfg), "--login", "alice@example.com"])
    text = capsys.readouterr().out
    assert code == 0
    assert "decision:  accept at end of message" in text and "class:     ham" in text
    assert "X-Outpost-Class: ham" in text and "X-Outpost-User: alice" in text

    code = main(["scan", str(ham), "-c", str(cfg), "--client-ip", "198.51.100.1"])
    assert code == 1 and "198.51.100.1 is not an authorized outgoing sender" in capsys.readouterr().out


def test_scan_does_not_count(setup, capsys):
    tmp, cfg = setup
    ham = tmp / "ham.eml"
    ham.write_bytes(corpus_message("ham", HAM, "alice@example.com"))
    with open(cfg, "a") as fh:
        fh.write("defaults: {limits: {messages: ['1/1h']}}\n")
    for _ in range(3):
        assert main(["scan", str(ham), "-c", str(cfg), "--login", "alice@example.com"]) == 0
    capsys.readouterr()


def test_train_stores_the_model_and_the_engine_uses_it(setup, capsys, tmp_path):
    tmp, cfg = setup
    spam_dir, ham_dir = tmp / "s", tmp / "h"
    spam_dir.mkdir(), ham_dir.mkdir()
    for i in range(5):
        (spam_dir / f"{i}.eml").write_bytes(
            f"From: x@example.com\nSubject: zorblax offer {i}\n\nbuy zorblax quantum pills now {i}\n".encode())
        (ham_dir / f"{i}.eml").write_bytes(
            f"From: x@example.com\nSubject: minutes {i}\n\nthe committee minutes are attached {i}\n".encode())
    assert main(["train", "--spam", str(spam_dir), "--ham", str(ham_dir), "-c", str(cfg)]) == 0
    assert "trained on 5 spam and 5 ham messages" in capsys.readouterr().out
    store = open_store(f"sqlite:///{tmp}/state.db")
    assert store.get_blob(MODEL_BLOB)
    from outpost.spam.bayes import Model
    assert Model.from_bytes(store.get_blob(MODEL_BLOB)).nspam == 5


def test_scan_takes_every_address_of_the_to_header(setup, capsys):
    tmp, cfg = setup
    with open(cfg, "a") as fh:
        fh.write("defaults: {limits: {recipients: ['2/1h']}}\n")
    msg = tmp / "m.eml"

    def scan(to: str) -> tuple[int, str, str]:
        msg.write_bytes(b"From: Alice <alice@example.com>\r\nTo: " + to.encode() + b"\r\n"
                        b"Subject: lunch\r\n\r\nSee you at noon.\r\n")
        code = main(["scan", str(msg), "-c", str(cfg), "--login", "alice@example.com", "--json"])
        out, err = capsys.readouterr()
        return code, out, err
    code, out, _ = scan("Bob Smith <bob@dest.example>")          # the address, not the whole value
    assert code == 0 and json.loads(out)["action"] == "accept"
    code, out, _ = scan('"Smith, Bob" <bob@dest.example>, carol@dest.example, Dave <dave@dest.example>')
    doc = json.loads(out)
    assert code == 1 and doc["reason"] == "rate_limit", doc                # 3 recipients of 2/1h
    many = ", ".join(f"User {i} <u{i}@dest.example>" for i in range(10000))
    code, out, err = scan(many)                                  # refused at once, with what to do
    assert code == 2 and out == "" and "--rcpt" in err and "To header" in err
    code, out, err = scan(", ".join(f"u{i}@d.example" for i in range(1001)))
    assert code == 2 and "1001 addresses" in err and "--rcpt" in err
