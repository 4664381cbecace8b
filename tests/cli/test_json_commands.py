"""Every read command's ``--json``: one JSON document with the documented
fields (docs/operations.rst, "Machine-readable output"), and the documented exit codes
(0 ok, 1 not found / check failed, 2 usage or configuration error, 3 store
error)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from outpost.cli import main
from outpost.config import load_config
from outpost.core.idtoken import Origin, TokenCodec, read_secret
from outpost.core.policy import Policy
from outpost.core.types import Message
from outpost.runtime import open_shared_store
from tests.services.redis import RedisServer

CONFIG = """\
report_abuse_to: abuse@example.net
domains: [example.com]
users:
  - {name: webfarm, type: ip, ips: [192.0.2.0/28], domains: [example.com],
     limits: {messages: ["5/1m", "100/1h"]}, user_limits: {messages: ["50/1m"]}}
  - {name: alice, type: login, logins: [alice@example.com], domains: [example.com]}
"""


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    secret = tmp_path / "secret"
    assert main(["secret", str(secret)]) == 0
    password = tmp_path / "report-password"
    password.write_text("s3cret\n")
    password.chmod(0o600)
    path = tmp_path / "outpost.yaml"
    path.write_text(f"secret_file: {secret}\nstore: sqlite:///{tmp_path}/state.db\n"
                    f"reports: {{spool_dir: {tmp_path}/reports, smtp: {{username: outpost-reports, "
                    f"password_file: {password}}}}}\n" + CONFIG)
    return path


def run_json(capsys, argv: list[str], code: int = 0) -> dict:
    got = main(argv)
    out, err = capsys.readouterr()
    assert got == code, (out, err)
    doc = json.loads(out)
    assert isinstance(doc, dict)
    return doc


def busy(cfg: Path, messages: int = 4) -> None:
    """``messages`` messages from webfarm/1042 counted in the store's limits
    and statistics, and one refusal of alice."""
    config = load_config(str(cfg))
    store = open_shared_store(config)
    policy = Policy(config, store, TokenCodec(b"\0" * 32))
    user = policy.index.by_name["webfarm"]
    for _ in range(messages):
        assert store.hit(policy.buckets(Message(user_name="webfarm", identity="1042"), user, 1)).allowed
    store.stat_add([("m", messages + 1), ("rc", messages + 1), ("a:accept", messages),
                    ("a:tempfail", 1), ("b", 1), ("r:rate_limit", 1), ("u:webfarm", messages),
                    ("ur:webfarm", messages), ("u:alice", 1), ("ur:alice", 1), ("ub:alice", 1)],
                   [("i:webfarm/1042", messages), ("i:alice/alice@example.com", 1)])
    store.close()


def test_check_config_json(cfg, capsys):
    doc = run_json(capsys, ["check-config", "--json", "-c", str(cfg)])
    assert doc == {"file": str(cfg), "ok": True, "strict": False, "users": 2, "networks": 1,
                   "domains": 1, "included": [], "errors": [], "store_errors": [], "warnings": []}
    cfg.write_text(cfg.read_text() + "bogus: 1\nworkers: 0\n")
    doc = run_json(capsys, ["check-config", "--json", "-c", str(cfg)], code=2)
    assert doc["ok"] is False and doc["users"] is None and len(doc["errors"]) == 2
    assert "bogus: unknown key" in doc["errors"][0] and "workers: 0 is below" in doc["errors"][1]


def test_check_config_strict_lists_every_error(cfg, capsys, tmp_path):
    (tmp_path / "secret").unlink()
    original = cfg.read_text()
    text = original.replace("ips: [192.0.2.0/28]", "ips: [192.0.2.300]")
    cfg.write_text(text + "  - {name: bob, type: login, domains: [example.com]}\n")
    assert main(["check-config", "-c", str(cfg)]) == 2           # not strict: the first only
    err = capsys.readouterr().err
    assert err.count("configuration error") == 1 and "192.0.2.300" in err
    assert "(1 more error: outpost check-config --strict lists every one)" in err
    assert main(["check-config", "--strict", "-c", str(cfg)]) == 2
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert out == "" and len(lines) == 2, err
    assert "users[0].ips[0]: '192.0.2.300' is not an IP network" in lines[0]
    assert "user 'bob' of type login needs 'logins'" in lines[1]
    cfg.write_text(original)
    assert main(["check-config", "-c", str(cfg)]) == 0            # not strict: a warning
    assert "warning: secret_file" in capsys.readouterr().err
    assert main(["check-config", "--strict", "-c", str(cfg)]) == 2
    assert "configuration error: " in capsys.readouterr().err          # strict: a missing secret is an error


def test_check_config_strict_opens_the_store(cfg, capsys, tmp_path):
    # a database that does not exist yet is not created (check-config may run
    # as root, the service as its own user), only its folder is checked
    doc = run_json(capsys, ["check-config", "--strict", "--json", "-c", str(cfg)])
    assert doc["ok"] and not (tmp_path / "state.db").exists()
    assert doc["warnings"] == [f"store sqlite:///{tmp_path}/state.db: the database does not "
                               f"exist yet ('outpost run' creates it)"]
    busy(cfg, 1)                                 # now it exists, and is opened and read
    assert main(["check-config", "--strict", "-c", str(cfg)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{cfg}: OK (2 users") and err == ""
    (tmp_path / "state.db").write_bytes(b"this is not a database" * 100)
    assert main(["check-config", "--strict", "-c", str(cfg)]) == 3
    assert "store error: store sqlite:///" in capsys.readouterr().err
    (tmp_path / "state.db").unlink()
    srv = RedisServer()                      # a free port, nothing listening
    try:
        cfg.write_text(cfg.read_text().replace(f"store: sqlite:///{tmp_path}/state.db",
                                               f"store: {srv.url}\nstore_options: "
                                               f"{{connect_timeout: 0.2, op_timeout: 0.2}}"))
        assert main(["check-config", "-c", str(cfg)]) == 0      # not strict: the store is not opened
        capsys.readouterr()
        doc = run_json(capsys, ["check-config", "--strict", "--json", "-c", str(cfg)], code=3)
    finally:
        srv.close()
    assert doc["ok"] is False and doc["errors"] == [] and len(doc["store_errors"]) == 1
    assert doc["store_errors"][0].startswith(f"store {srv.url}: redis store")


def test_whois_json(cfg, capsys):
    config = load_config(str(cfg))
    token = TokenCodec(read_secret(config.secret_file)).seal(
        Origin(user="alice", identity="alice@example.com", client_ip="192.0.2.5", queue_id="",
               time=1_700_000_000))
    doc = run_json(capsys, ["whois", "--json", "-c", str(cfg), token])
    assert doc == {"user": "alice", "identity": "alice@example.com", "client_ip": "192.0.2.5",
                   "queue_id": None, "time": 1_700_000_000}
    mid = len(token) // 2                # a character in the middle: the last ones may be padding bits
    tampered = token[:mid] + ("B" if token[mid] == "A" else "A") + token[mid + 1:]
    assert main(["whois", "--json", "-c", str(cfg), tampered]) == 1
    assert capsys.readouterr().out == ""


def test_locks_json(cfg, capsys):
    assert run_json(capsys, ["locks", "--json", "-c", str(cfg)]) == {"locks": []}
    assert main(["lock", "webfarm/1042", "--for", "1h", "--reason", "spam run", "-c", str(cfg)]) == 0
    assert main(["lock", "alice", "-c", str(cfg)]) == 0
    capsys.readouterr()
    locks = run_json(capsys, ["locks", "--json", "-c", str(cfg)])["locks"]
    assert [(lk["key"], lk["user"], lk["identity"], lk["by"]) for lk in locks] == [
        ("webfarm/1042", "webfarm", "1042", "operator"), ("user:alice", "alice", None, "operator")]
    assert locks[0]["reason"] == "spam run" and 3500 < locks[0]["expires_in"] <= 3600
    assert locks[0]["until"] - locks[0]["since"] == pytest.approx(3600, abs=1)
    assert locks[1]["until"] is None and locks[1]["expires_in"] is None
    assert locks[0]["auto_unlocks"] == 0


def test_usage_json(cfg, capsys):
    busy(cfg, 3)
    doc = run_json(capsys, ["usage", "--json", "-c", str(cfg), "webfarm/1042"])
    [block] = doc["usage"]
    assert block["kind"] == "identity" and block["user"] == "webfarm" and block["identity"] == "1042"
    assert [(w["what"], w["label"], w["used"], w["limit"], w["window"]) for w in block["windows"]] == [
        ("messages", "5/1m", 3, 5, 60.0), ("messages", "100/1h", 3, 100, 3600.0)]
    assert 0 < block["windows"][0]["resets_in"] <= 61
    doc = run_json(capsys, ["usage", "--json", "-c", str(cfg)])
    assert [(b["kind"], b["user"], b["identity"]) for b in doc["usage"]] == [
        ("user", "webfarm", None), ("user", "alice", None)]
    assert doc["usage"][0]["windows"][0]["used"] == 3 and doc["usage"][1]["windows"] == []


def test_stats_json(cfg, capsys):
    empty = run_json(capsys, ["stats", "--json", "-c", str(cfg)])
    assert empty["last_hour"]["messages"] == 0 and empty["last_day"]["top_users_by_messages"] == []
    busy(cfg, 4)
    doc = run_json(capsys, ["stats", "--json", "-c", str(cfg)])
    for period in ("last_hour", "last_day"):
        s = doc[period]
        assert set(s) == {"messages", "recipients", "blocked", "quarantined", "actions",
                          "block_reasons", "top_users_by_messages", "top_users_by_recipients",
                          "top_users_by_blocks"}
        assert (s["messages"], s["recipients"], s["blocked"], s["quarantined"]) == (5, 5, 1, 0)
        assert s["actions"] == {"accept": 4, "tempfail": 1}
        assert s["block_reasons"] == {"rate_limit": 1}
        assert s["top_users_by_messages"] == [{"user": "webfarm", "count": 4},
                                              {"user": "alice", "count": 1}]
        assert s["top_users_by_blocks"] == [{"user": "alice", "count": 1}]
    assert main(["stats", "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("last hour: 5 messages, 5 recipients, 1 refused, 0 quarantined")
    assert "top users by messages: webfarm 4, alice 1" in out


def test_top_json(cfg, capsys):
    assert run_json(capsys, ["top", "--json", "-c", str(cfg)]) == {"top": []}
    busy(cfg, 4)
    rows = run_json(capsys, ["top", "--json", "-c", str(cfg)])["top"]
    assert [(r["kind"], r["user"], r["identity"], r["fill"]) for r in rows] == [
        ("identity", "webfarm", "1042", 0.8), ("user", "webfarm", None, 0.08)]
    first = rows[0]
    assert first["messages_last_hour"] == 4
    assert first["nearest"]["label"] == "5/1m" and first["nearest"]["used"] == 4
    assert len(first["windows"]) == 2
    assert main(["top", "-c", str(cfg)]) == 0
    assert "webfarm/1042" in capsys.readouterr().out


def test_reports_list_json(cfg, capsys):
    doc = run_json(capsys, ["reports", "list", "--json", "-c", str(cfg)])
    assert doc == {"reports": [], "overflow": []}


def test_read_commands_all_take_json():
    from outpost.cli import build_parser
    parser = build_parser()
    for argv in (["check-config"], ["whois", "t"], ["locks"], ["usage"], ["stats"], ["top"],
                 ["reports", "list"], ["quarantine", "list"], ["domains", "check", "example.com"],
                 ["scan", "f.eml"]):
        assert parser.parse_args([*argv, "--json"]).json is True, argv


@pytest.mark.parametrize("argv,code", [
    (["usage", "nobody"], 2),                    # operator error: no such user
    (["lock", "webfarm"], 0),
    (["unlock", "webfarm/1042"], 1),             # not locked
    (["reset", "webfarm/"], 2),                  # malformed identity
])
def test_exit_codes(cfg, capsys, argv, code):
    assert main([*argv, "-c", str(cfg)]) == code


def test_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["stats", "--no-such-option"])
    assert exc.value.code == 2


def test_domains_check_json(tmp_path, capsys):
    """Against a real DNS server (NSD): exit 0 and ok for a good domain, 1
    for a bad one, with the documented fields."""
    from outpost.effects.dkim import keygen, zone_txt
    from tests.services.dns import DnsServer
    good_key, good_txt = keygen("good.test", "s1", "rsa", 1024, str(tmp_path))
    bad_key, _ = keygen("bad.test", "s1", "rsa", 1024, str(tmp_path))
    zones = {"relay.test": 'spf TXT "v=spf1 ip4:198.51.100.7 -all"',
             "good.test": "\n".join(['@ TXT "v=spf1 include:spf.relay.test -all"',
                                     f"s1._domainkey TXT ( {zone_txt(good_txt)} )",
                                     '_dmarc TXT "v=DMARC1; p=reject"']),
             "bad.test": '@ TXT "v=spf1 ip4:192.0.2.1 -all"'}
    with DnsServer(zones) as dns:
        cfg = tmp_path / "outpost.yaml"
        cfg.write_text(textwrap.dedent(f"""\
            report_abuse_to: abuse@example.net
            dns: {{nameservers: [127.0.0.1], port: {dns.port}}}
            relay: {{egress_ips: [198.51.100.7], spf_domain: spf.relay.test}}
            domains:
              - {{name: good.test, dkim: {{selector: s1, key: {good_key}}}}}
              - {{name: bad.test, dkim: {{selector: s1, key: {bad_key}}}}}
            users:
              - {{name: web, type: ip, ips: [192.0.2.0/28], domains: [good.test, bad.test]}}
            """))
        good = run_json(capsys, ["domains", "check", "--json", "-c", str(cfg), "good.test"])
        bad = run_json(capsys, ["domains", "check", "--json", "-c", str(cfg), "bad.test"], code=1)
    assert set(good) == {"domain", "ok", "spf", "dkim", "dmarc"}
    assert good["domain"] == "good.test" and good["ok"] is True
    assert good["spf"]["results"] == [["198.51.100.7", "pass"]] and good["spf"]["suggestion"] == ""
    assert [(d["selector"], d["ok"], d["problem"]) for d in good["dkim"]] == [("s1", True, "")]
    assert good["dmarc"]["policy"] == "reject"
    assert bad["ok"] is False and bad["spf"]["results"] == [["198.51.100.7", "fail"]]
    assert bad["spf"]["suggestion"] and bad["dkim"][0]["problem"].startswith("missing")
    assert bad["dmarc"]["record"] is None and bad["dmarc"]["warning"]
