"""Prove the real-Sendmail harness and pin down how Sendmail talks to a milter.

A tiny pymilter (a subprocess on the instance's unix socket) stamps the
macros it saw at each stage into headers, and answers with replies chosen by
the test (by client address, sender or subject), so that each test asserts
what the SMTP client and the sink really got.  The facts these tests pin
down are the ones docs/sendmail.rst states.
"""

from __future__ import annotations

import smtplib
import socket
import subprocess
import sys
import textwrap
import time
from typing import Iterator

import pytest

from tests.services import smtp
from tests.services.milter import MilterProcess
from tests.services.sendmail import CONTRIB_FRAGMENT, SendmailInstance, access_prefixes, render_fragment
from tests.services.sink import SmtpSink

# Stamps macros per stage as X-Test-<stage>-<macro>; behaviour by trigger:
#   client 127.0.0.42/43/44 -> 421/451/550 at connect; MAIL FROM tempfail421@ -> 421 at MAIL;
#   MAIL FROM reject550@ -> 550 at MAIL; subject "eom451"/"eom421" -> 451/421
#   at end of data; subject "slow" -> 3 s pause at end of data;
#   subject "hold" -> quarantine.  Header values are stamped with repr().
TEST_MILTER = textwrap.dedent('''
    import sys
    import time
    import Milter

    STAGES = {
        "connect": ("{client_addr}", "{client_name}", "{daemon_name}", "j", "i"),
        "envfrom": ("{auth_authen}", "{auth_type}", "{mail_addr}", "i"),
        "envrcpt": ("{rcpt_addr}", "i"),
        "eom": ("i", "{msg_id}"),
    }

    class Stamp(Milter.Base):
        def __init__(self):
            self.seen = []
            self.subject = ""
            self.spaced = None

        def _see(self, stage):
            for macro in STAGES[stage]:
                self.seen.append((stage, macro, self.getsymval(macro)))

        def connect(self, hostname, family, hostaddr):
            self.conn_seen = []
            self._see("connect")
            self.conn_seen, self.seen = self.seen, []
            self.hostaddr = hostaddr
            if hostaddr and hostaddr[0] == "127.0.0.42":
                self.setreply("421", "4.7.0", "connect refused by test milter")
                return Milter.TEMPFAIL
            if hostaddr and hostaddr[0] == "127.0.0.43":
                self.setreply("451", "4.7.0", "connect deferred by test milter")
                return Milter.TEMPFAIL
            if hostaddr and hostaddr[0] == "127.0.0.44":
                self.setreply("550", "5.7.1", "connect rejected by test milter")
                return Milter.REJECT
            return Milter.CONTINUE

        def envfrom(self, mailfrom, *params):
            self.seen = list(self.conn_seen)
            self.subject = ""
            self.spaced = None
            self._see("envfrom")
            if mailfrom.strip("<>").startswith("tempfail421@"):
                self.setreply("421", "4.7.0", "closing by test milter")
                return Milter.TEMPFAIL
            if mailfrom.strip("<>").startswith("reject550@"):
                self.setreply("550", "5.7.1", "rejected by test milter")
                return Milter.REJECT
            return Milter.CONTINUE

        def envrcpt(self, to, *params):
            self._see("envrcpt")
            return Milter.CONTINUE

        def header(self, name, value):
            if name.lower() == "subject":
                self.subject = value
            if name.lower() == "x-spaced":
                self.spaced = value
            return Milter.CONTINUE

        def eom(self):
            if "slow" in self.subject:
                time.sleep(3)
            self._see("eom")
            for stage, macro, value in self.seen:
                self.addheader("X-Test-%s-%s" % (stage, macro.strip("{}")),
                               "-" if value is None else value)
            self.addheader("X-Test-hostaddr", repr(self.hostaddr))
            if self.spaced is not None:
                self.addheader("X-Test-spaced", repr(self.spaced))
            if "eom421" in self.subject:
                self.setreply("421", "4.7.0", "closing at end of data, says the test milter")
                return Milter.TEMPFAIL
            if "eom451" in self.subject:
                self.setreply("451", "4.7.1", "try again later, says the test milter")
                return Milter.TEMPFAIL
            if "hold" in self.subject:
                self.quarantine("held by test milter")
            return Milter.CONTINUE

    Milter.set_flags(Milter.ADDHDRS | Milter.QUARANTINE)
    Milter.factory = Stamp
    Milter.runmilter("stamp", sys.argv[1], 30)
''')


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink().start()
    try:
        yield sink
    finally:
        sink.stop()


@pytest.fixture(scope="module")
def sendmail(smtp_sink: SmtpSink) -> Iterator[SendmailInstance]:
    instance = SendmailInstance(sink_port=smtp_sink.port)
    try:
        t0 = time.monotonic()
        instance.start()
        print(f"\nsendmail build+start {time.monotonic() - t0:.3f}s")
        yield instance
    finally:
        t0 = time.monotonic()
        instance.cleanup()
        print(f"\nsendmail stop+cleanup {time.monotonic() - t0:.3f}s")


@pytest.fixture(scope="module")
def stamp_milter(sendmail: SendmailInstance) -> Iterator[MilterProcess]:
    script = sendmail.base_dir / "stamp_milter.py"
    script.write_text(TEST_MILTER)
    proc = MilterProcess([sys.executable, str(script), "{socket}"], sendmail.milter_socket)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def sink(smtp_sink: SmtpSink, stamp_milter: MilterProcess,
         sendmail: SendmailInstance) -> SmtpSink:
    """The module's sink, emptied once earlier tests' mail is delivered,
    with the stamp milter running."""
    stamp_milter.start()
    sendmail.wait_queue_empty(include_hold=True)
    smtp_sink.clear()
    return smtp_sink


def session(port: int, source: str = "127.0.0.1", host: str = "127.0.0.1") -> smtplib.SMTP:
    """An SMTP session after EHLO, from the given source address."""
    client = smtplib.SMTP(host, port, timeout=15, source_address=(source, 0))
    client.ehlo("client.example.org")
    return client


def transact(client: smtplib.SMTP, mail_from: str = "sender@example.com",
             subject: str = "test", extra: str = "") -> tuple[int, str]:
    """One MAIL/RCPT/DATA transaction; the final reply (or the first failing one)."""
    code, text = client.docmd("MAIL", f"FROM:<{mail_from}>")
    if code != 250:
        return code, text.decode()
    code, text = client.docmd("RCPT", "TO:<rcpt@example.net>")
    if code != 250:
        return code, text.decode()
    message = smtp.build_message(mail_from, subject=subject).decode()
    if extra:
        message = extra + message
    try:
        code, text = client.data(message.encode())
    except smtplib.SMTPDataError as exc:
        return exc.smtp_code, exc.smtp_error.decode()
    return code, text.decode()


# ------------------------------------------------------------------- tests

def test_config_includes_the_shipped_fragment(sendmail: SendmailInstance) -> None:
    rendered = (sendmail.config_dir / "outpost.mc").read_text()
    assert f"S={sendmail.milter}, F=T" in rendered
    assert f"Port={sendmail.submission_port}, Addr=127.0.0.1, Name=MSA, M=Ea" in rendered
    assert f"include(`{sendmail.config_dir}/outpost.mc')" in (sendmail.config_dir
                                                            / "sendmail.mc").read_text()
    cf = sendmail.cf_path.read_text()
    assert f"Xoutpost, S={sendmail.milter}, F=T" in cf
    assert "O Milter.macros.envfrom=i, {auth_type}, {auth_authen}" in cf
    assert access_prefixes(["127.0.0.0/8", "198.51.100.0/24"]) == ["127", "198.51.100"]
    with pytest.raises(ValueError):
        access_prefixes(["10.0.0.0/12"])
    assert "INPUT_MAIL_FILTER" not in render_fragment(
        (sendmail.fragment).read_text(), milter="", submission_port=1)


REPORTS_DAEMON = "Port=10587, Addr=127.0.0.1, Name=OutpostReports, M=Ea, InputMailFilters="


@pytest.mark.parametrize("before, daemons", [
    ("", ["Name=MTA", "Port=submission, Name=MSA, M=Ea", REPORTS_DAEMON]),
    ("DAEMON_OPTIONS(`Family=inet, Name=MTA-v4, Port=smtp, Addr=127.0.0.1')dnl",
     ["Family=inet, Name=MTA-v4, Port=smtp, Addr=127.0.0.1", "Port=submission, Name=MSA, M=Ea",
      REPORTS_DAEMON]),
])
def test_shipped_fragment_in_a_plain_mc(sendmail: SendmailInstance, tmp_path, before: str,
                                        daemons: list[str]) -> None:
    """Added to a plain .mc the fragment keeps a port-25 listener and
    replaces the default MSA (one listener per port)."""
    mc = tmp_path / "plain.mc"
    mc.write_text(f"include(`{sendmail.dist.cf_dir}/m4/cf.m4')dnl\nOSTYPE(`linux')dnl\n"
                  f"{before}\ninclude(`{sendmail.fragment}')dnl\nMAILER(`smtp')dnl\n")
    cf = subprocess.run(["m4", str(mc)], capture_output=True, text=True, check=True).stdout
    assert [line.split("=", 1)[1] for line in cf.splitlines()
            if line.startswith("O DaemonPortOptions=")] == daemons
    assert "Xoutpost, S=unix:/run/outpost/outpost.sock, F=T, T=C:10s;S:30s;R:30s;E:2m" in cf
    assert "O AuthOptions=A p y" in cf


def test_relay_listener_passes_the_real_source_address(sendmail: SendmailInstance,
                                                       sink: SmtpSink) -> None:
    with session(sendmail.relay_port, source="127.0.0.77") as client:
        code, text = transact(client)
    assert code == 250, text
    qid = text.split()[1]
    (msg,) = sink.wait_for(1)
    assert msg.headers("X-Test-connect-client_addr") == ["127.0.0.77"]
    assert msg.headers("X-Test-connect-daemon_name") == ["MTA"]
    assert msg.headers("X-Test-connect-j") == [sendmail.hostname]
    assert msg.headers("X-Test-envfrom-auth_authen") == ["-"]
    assert msg.headers("X-Test-hostaddr")[0].startswith("('127.0.0.77', ")
    # The queue id: not sent at connect (not in the connect macro list), the
    # final id from MAIL FROM on.
    assert msg.headers("X-Test-connect-i") == ["-"]
    assert msg.headers("X-Test-envfrom-i") == [qid]
    assert msg.headers("X-Test-envrcpt-i") == [qid]
    assert msg.headers("X-Test-eom-i") == [qid]


def test_queue_id_changes_per_transaction(sendmail: SendmailInstance, sink: SmtpSink) -> None:
    with session(sendmail.relay_port, source="127.0.0.78") as client:
        first = transact(client, subject="one")
        second = transact(client, subject="two")
    assert first[0] == second[0] == 250
    ids = [first[1].split()[1], second[1].split()[1]]
    assert ids[0] != ids[1]
    msgs = sink.wait_for(2)
    assert sorted(m.headers("X-Test-envfrom-i")[0] for m in msgs) == sorted(ids)


def test_relay_refused_outside_mynetworks(sink: SmtpSink) -> None:
    only = SendmailInstance(sink_port=sink.port, milter="", mynetworks=["127.0.0.5/32"])
    try:
        only.start()
        with session(only.relay_port, source="127.0.0.5") as client:
            assert transact(client)[0] == 250
        with session(only.relay_port, source="127.0.0.6") as client:
            code, text = transact(client)
        assert code == 550 and text.startswith("5.7.1 <rcpt@example.net>... Relaying denied"), text
        (msg,) = sink.wait_for(1)
        assert msg.peer[0] == "127.0.0.1" and not msg.headers("X-Test-eom-i")  # no milter
    finally:
        only.cleanup()


def test_msa_requires_auth_and_passes_the_login(sendmail: SendmailInstance, sink: SmtpSink) -> None:
    sendmail.add_sasl_user("alice", "s3cret")
    sendmail.add_sasl_user("bob@example.com", "pw2")
    anonymous = smtp.send(sendmail.submission_port)
    assert (anonymous.stage, anonymous.code) == ("mail", 530)
    bad = smtp.send(sendmail.submission_port, login="alice", password="wrong")
    assert (bad.stage, bad.code) == ("auth", 535)
    good = smtp.send(sendmail.submission_port, login="alice", password="s3cret")
    assert good.accepted, good
    with_domain = smtp.send(sendmail.submission_port, login="bob@example.com", password="pw2")
    assert with_domain.accepted, with_domain
    msgs = sink.wait_for(2)
    by_login = {m.headers("X-Test-envfrom-auth_authen")[0]: m for m in msgs}
    assert set(by_login) == {"alice", "bob@example.com"}
    assert by_login["alice"].headers("X-Test-envfrom-auth_type") == ["PLAIN"]
    assert by_login["alice"].headers("X-Test-connect-daemon_name") == ["MSA"]
    assert by_login["alice"].headers("X-Test-connect-client_addr") == ["127.0.0.1"]


def test_milter_down_tempfails(sendmail: SendmailInstance, sink: SmtpSink,
                               stamp_milter: MilterProcess) -> None:
    sendmail.add_sasl_user("alice", "s3cret")
    stamp_milter.stop()
    # F=T: the session's milter initialisation fails and Sendmail tempfails
    # the first command that needs it -- MAIL on the relay listener, AUTH
    # (already) on the MSA.
    relay = smtp.send(sendmail.relay_port)
    assert (relay.stage, relay.code, relay.text) == ("mail", 451, "4.3.2 Please try again later")
    msa = smtp.send(sendmail.submission_port, login="alice", password="s3cret")
    assert (msa.stage, msa.code, msa.text) == ("auth", 454, "4.3.0 Please try again later")
    stamp_milter.start()
    assert smtp.send(sendmail.relay_port).accepted
    assert len(sink.wait_for(1)) == 1


def test_quarantine_and_release(sendmail: SendmailInstance, sink: SmtpSink) -> None:
    with session(sendmail.relay_port, source="127.0.0.79") as client:
        code, text = transact(client, subject="please hold this")
    assert code == 250, text
    qid = text.split()[1]
    deadline = time.monotonic() + 10
    while qid not in sendmail.hold_queue() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sendmail.hold_queue() == [qid]
    (entry,) = [e for e in sendmail.queue() if e.queue_id == qid]
    assert entry.raw["quarantine_reason"] == "held by test milter"
    assert entry.recipients == ["rcpt@example.net"]
    listing = sendmail.mailq("-qQ")
    assert qid in listing and "held by test milter" in listing
    sendmail.flush()               # a whole queue run, in the foreground: held stays held
    assert sink.messages == [] and sendmail.hold_queue() == [qid]
    sendmail.release(qid)
    (msg,) = sink.wait_for(1)
    assert msg.headers("X-Test-eom-i") == [qid]
    sendmail.wait_queue_empty(include_hold=True)


def test_milter_421_at_connect(sendmail: SendmailInstance, sink: SmtpSink) -> None:
    # The milter's text is not used at connect: Sendmail sends its own 421.
    with pytest.raises(smtplib.SMTPConnectError) as info:
        smtplib.SMTP("127.0.0.1", sendmail.relay_port, timeout=15,
                     source_address=("127.0.0.42", 0))
    assert info.value.smtp_code == 421
    assert info.value.smtp_error.decode() == f"4.7.0 {sendmail.hostname} closing connection"


def test_milter_451_at_connect(sendmail: SendmailInstance, sink: SmtpSink) -> None:
    """A 4xx other than 421 at connect: normal greeting, then every command
    is tempfailed with Sendmail's own text."""
    with session(sendmail.relay_port, source="127.0.0.43") as client:
        code, text = client.docmd("MAIL", "FROM:<sender@example.com>")
    assert (code, text.decode()) == (451, "4.3.2 Please try again later")


def test_milter_550_at_connect(sendmail: SendmailInstance, sink: SmtpSink) -> None:
    """A 5xx at connect: Sendmail greets with its own 554."""
    with pytest.raises(smtplib.SMTPConnectError) as info:
        smtplib.SMTP("127.0.0.1", sendmail.relay_port, timeout=15,
                     source_address=("127.0.0.44", 0))
    assert (info.value.smtp_code, info.value.smtp_error.decode()) == (
        554, f"{sendmail.hostname} ESMTP not accepting messages")


def test_milter_421_at_mail_from(sendmail: SendmailInstance, sink: SmtpSink) -> None:
    with session(sendmail.relay_port, source="127.0.0.80") as client:
        code, text = client.docmd("MAIL", "FROM:<tempfail421@example.com>")
        assert (code, text.decode()) == (421, "4.7.0 closing by test milter")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.docmd("NOOP")


def test_milter_550_at_mail_and_451_at_end_of_data(sendmail: SendmailInstance,
                                                    sink: SmtpSink) -> None:
    with session(sendmail.relay_port, source="127.0.0.81") as client:
        # At MAIL/RCPT Sendmail puts the address before the milter's text.
        assert transact(client, mail_from="reject550@example.com") == (
            550, "5.7.1 <reject550@example.com>... rejected by test milter")
        # The session goes on: the next transaction is filtered afresh.
        assert transact(client, subject="eom451") == (
            451, "4.7.1 try again later, says the test milter")
        code, text = transact(client, subject="fine")
        assert code == 250, text
    (msg,) = sink.wait_for(1)
    assert msg.headers("Subject") == ["fine"]


def test_milter_421_at_end_of_data(sendmail: SendmailInstance, sink: SmtpSink) -> None:
    with session(sendmail.relay_port, source="127.0.0.82") as client:
        assert transact(client, subject="eom421") == (
            421, "4.7.0 closing at end of data, says the test milter")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.docmd("NOOP")
    deadline = time.monotonic() + 10  # a message accepted after all would be queued or delivered
    while sendmail.queue() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sink.messages == [] and sendmail.queue() == []


def test_header_leading_whitespace(sendmail: SendmailInstance, sink: SmtpSink) -> None:
    with session(sendmail.relay_port) as client:
        code, text = transact(client, extra="X-Spaced:   three spaces\r\n\tand a fold\r\n")
    assert code == 250, text
    (msg,) = sink.wait_for(1)
    # Without SMFIP_HDR_LEADSPC Sendmail drops exactly one space after the
    # colon; a folded value reaches the milter with its CRLF as "\n".
    assert msg.headers("X-Test-spaced") == [repr("  three spaces\n\tand a fold")]


def _free_port_v6() -> int | None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
            return s.getsockname()[1]
    except OSError:
        return None


def test_ipv6_client_addr_has_the_ipv6_prefix(sink: SmtpSink, stamp_milter: MilterProcess) -> None:
    port6 = _free_port_v6()
    if port6 is None:
        pytest.skip("no IPv6 loopback here")
    v6 = SendmailInstance(sink_port=sink.port, mynetworks=["127.0.0.0/8", "::1/128"],
                          milter=f"unix:{stamp_milter.socket_path}",
                          mc_extra=[f"DAEMON_OPTIONS(`Family=inet6, Addr=::1, Port={port6}, "
                                    "Name=MTA6')dnl"])
    try:
        v6.start()
        deadline = time.monotonic() + 10
        while True:
            try:
                client = smtplib.SMTP("::1", port6, timeout=15)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        with client:
            client.ehlo("client.example.org")
            code, text = transact(client)
        assert code == 250, text
        (msg,) = sink.wait_for(1)
        # Sendmail's macro: "IPv6:" and the full, uncompressed form;
        # pymilter's hostaddr: the compressed address and a 4-tuple.
        assert msg.headers("X-Test-connect-client_addr") == ["IPv6:0:0:0:0:0:0:0:1"]
        assert msg.headers("X-Test-hostaddr")[0].startswith("('::1', ")
        v6.wait_queue_empty()
    finally:
        v6.cleanup()


def test_shipped_auth_options_need_starttls(sink: SmtpSink, stamp_milter: MilterProcess) -> None:
    """As shipped (``confAUTH_OPTIONS`` ``A p y``) PLAIN is refused in clear
    and works after STARTTLS."""
    tls = SendmailInstance(sink_port=sink.port, require_tls=True,
                           milter=f"unix:{stamp_milter.socket_path}")
    try:
        tls.start()
        assert "confAUTH_OPTIONS', `A y'" not in (tls.config_dir / "sendmail.mc").read_text()
        tls.add_sasl_user("carol", "pw3")
        clear = smtp.send(tls.submission_port, login="carol", password="pw3")
        assert (clear.stage, clear.code, clear.text) == ("auth", 503, "5.3.3 AUTH not available")
        secure = smtp.send(tls.submission_port, login="carol", password="pw3", tls="starttls")
        assert secure.accepted, secure
        (msg,) = sink.wait_for(1)
        assert msg.headers("X-Test-envfrom-auth_authen") == ["carol"]
        tls.wait_queue_empty()
    finally:
        tls.cleanup()


def test_reply_timeout_applies_at_end_of_data(sink: SmtpSink, stamp_milter: MilterProcess,
                                              tmp_path) -> None:
    """``R`` (read timeout) bounds every reply, the end-of-message one too,
    even when ``E`` is longer: a 3 s end of message with R:1s;E:10s is
    tempfailed after ~1 s."""
    shipped = CONTRIB_FRAGMENT.read_text()
    assert "T=C:10s;S:30s;R:30s;E:2m" in shipped
    fragment = tmp_path / "outpost.mc"
    fragment.write_text(shipped.replace("T=C:10s;S:30s;R:30s;E:2m", "T=C:2s;S:2s;R:1s;E:10s"))
    short = SendmailInstance(sink_port=sink.port, fragment=fragment,
                             milter=f"unix:{stamp_milter.socket_path}")
    try:
        short.start()
        t0 = time.monotonic()
        result = smtp.send(short.relay_port, message=smtp.build_message(subject="slow"))
        elapsed = time.monotonic() - t0
        assert (result.stage, result.code, result.text) == (
            "end", 451, "4.3.2 Please try again later"), result
        assert elapsed < 2.8, elapsed
        short.wait_for_log(r"timeout before data read, where=eom")
        assert short.queue() == []
    finally:
        short.cleanup()
    assert sink.messages == []
