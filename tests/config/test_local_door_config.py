"""Configuration of the local door: the ``local`` user type and the report
listener's authentication (``reports.listener_auth``)."""

import os
import textwrap

import pytest

from outpost.cli import main
from outpost.config import ConfigError, parse_config

BASE = textwrap.dedent("""\
    report_abuse_to: abuse@example.net
    domains: [example.com]
    users:
      - {name: alice, type: login, logins: [alice@example.com], domains: [example.com]}
    """)


def error_of(text):
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "t.yaml")
    return str(exc.value)


def test_local_user_needs_domains_and_takes_no_ips_or_logins():
    assert "needs 'domains'" in error_of(BASE + "  - {name: s, type: local}\n")
    assert "'ips' is only for users of type ip" in error_of(
        BASE + "  - {name: s, type: local, domains: [example.com], ips: [127.0.0.1]}\n")
    assert "'logins' is only for users of type login" in error_of(
        BASE + "  - {name: s, type: local, domains: [example.com], logins: [a@example.com]}\n")


def test_one_local_user_only_and_no_connection_limit():
    two = BASE + ("  - {name: s1, type: local, domains: [example.com]}\n"
                  "  - {name: s2, type: local, domains: [example.com]}\n")
    assert "only one user of type local ('s1' is one)" in error_of(two)
    assert "local submissions have none" in error_of(
        BASE + "  - {name: s, type: local, domains: [example.com], connection_limit: 5}\n")


def test_listener_auth_values():
    assert parse_config(BASE).reports.listener_auth == "sasl"
    assert parse_config(BASE + "reports: {listener_auth: none}\n").reports.listener_auth == "none"
    assert ("reports.listener_auth: 'open' is not one of: sasl, none"
            in error_of(BASE + "reports: {listener_auth: open}\n"))


@pytest.fixture
def cfg(tmp_path):
    def write(reports: str):
        path = tmp_path / "o.yaml"
        path.write_text(BASE + f"reports: {{spool_dir: {tmp_path}/spool, {reports}}}\n")
        return str(path)
    return write


def test_check_config_refuses_a_listener_without_credentials(cfg, capsys):
    assert main(["check-config", "-c", cfg("smtp: {port: 10587}")]) == 2
    assert "the report listener needs SMTP AUTH" in capsys.readouterr().err


def test_check_config_warns_about_plain_loopback(cfg, capsys):
    assert main(["check-config", "-c", cfg("listener_auth: none")]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "any process on that host" in err and "127.0.0.1:10587" in err


@pytest.mark.parametrize("mode,ok", [(0o600, True), (0o400, True), (0o640, False), (0o604, False)])
def test_password_file_must_be_private(cfg, tmp_path, capsys, mode, ok):
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    os.chmod(pw, mode)
    rc = main(["check-config", "-c", cfg(f"smtp: {{username: outpost-reports, password_file: {pw}}}")])
    err = capsys.readouterr().err
    assert rc == (0 if ok else 2), err
    if not ok:
        assert "gives access to group/others" in err
    assert "any process on that host" not in err       # no plain-listener warning


def test_missing_password_file_is_an_error(cfg, tmp_path, capsys):
    rc = main(["check-config", "-c", cfg(f"smtp: {{username: u, password_file: {tmp_path}/nope}}")])
    assert rc == 2 and "nope" in capsys.readouterr().err
