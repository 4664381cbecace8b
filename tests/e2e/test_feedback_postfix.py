"""Complaints back to the identity, through a real Postfix: a message from an
identity goes out through Postfix + Outpost, a receiver's ARF complaint
about its delivered copy comes back to Postfix, which hands it to the
shipped pipe transport (``contrib/postfix/master-feedback.cf``: ``pipe``
with ``user=outpost``, routed by a transport map), and after
``lock.after_complaints`` the identity is locked and its next message
refused while another identity of the same user is not.

The complaint is posted with Postfix's sendmail(1); the inbound path has no
Outpost here (``non_smtpd_milters`` off), as on an abuse mailbox's MX.  The
transport runs the command as ``outpost``: the configuration, the secret,
the spool and the SQLite store are that user's, and the command runs with
an interpreter it can read (as ``test_production_layout`` does).  An alias
pipe (``abuse-nobody: "|outpost feedback …"``), which Postfix runs as
``nobody``, is answered "try again later" with the reason."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from outpost.config.model import FeedbackSettings
from outpost.feedback_command import Spool, list_data
from outpost.spam.bayes import Model
from outpost.spam.from_config import MODEL_BLOB
from outpost.store import open_store
from tests.services.arf import complaint
from tests.services.local_submit import sendmail
from tests.services.postfix import PostfixInstance, parse_master_cf
from tests.services.serviceuser import ensure_user, service_python
from tests.services.sink import SmtpSink
from tests.services.smtp import build_message, send

from .outpost_proc import ROOT, Outpost

OUTPOST = Path(sys.executable).parent / "outpost"
ALIAS = "abuse-fbl@feedback.example.net"             # routed to the pipe transport
NOBODY_ALIAS = "abuse-nobody@feedback.example.net"    # an alias pipe: runs as nobody
CONFIG = textwrap.dedent("""\
    hostname: relay.example.net
    report_abuse_to: abuse@example.net
    domains: [example.com]
    defaults:
      lock: {after_complaints: 2, complaint_window: 1d, duration: 1h}
    users:
      - name: webfarm
        type: ip
        ips: [203.0.113.0/28]
        domains: [example.com]
        identity_headers:
          - {header: X-AuthUser}
    feedback:
      spool_dir: SPOOL
      learn_from_complaints: true
    """)


class FeedbackPostfix(PostfixInstance):
    """The harness's Postfix plus the shipped pipe transport, its command and
    configuration paths pointed at this test's."""

    command = Path("/usr/bin/outpost")
    outpost_config = Path("/etc/outpost/outpost.yaml")

    def master_cf(self):
        text = (self.contrib_dir / "master-feedback.cf").read_text()
        text = text.replace("/usr/bin/outpost", str(self.command)).replace(
            "/etc/outpost/outpost.yaml", str(self.outpost_config))
        return super().master_cf() + parse_master_cf(text)


@pytest.fixture(scope="module")
def relay():
    sink = SmtpSink().start()
    tables = Path(tempfile.mkdtemp(prefix="outpost-fbl-"))
    tables.chmod(0o755)
    aliases = tables / "aliases"
    transport = tables / "transport"
    spool = tables / "feedback"
    pf = FeedbackPostfix(sink_port=sink.port, main_overrides={
        "mydestination": "feedback.example.net", "local_transport": "local",
        "alias_maps": f"texthash:{aliases}", "transport_maps": f"texthash:{transport}",
        "non_smtpd_milters": ""})
    user = ensure_user("outpost").pw_name                 # the pipe transport's user=outpost
    # the store, shared by the milter (root) and the pipe (outpost): an SQLite file
    # owned by outpost (SQLite gives the WAL files root makes the database's owner)
    state = tables / "state"
    state.mkdir()
    (state / "state.db").touch()
    for path in (state, state / "state.db"):
        shutil.chown(path, user)
    op = Outpost(pf.milter_socket, CONFIG.replace("SPOOL", str(spool)),
                 store=f"sqlite:///{state}/state.db")
    try:
        # what the transport runs: `outpost feedback`, with an interpreter outpost can read
        found = service_python()
        if found is None:
            pytest.skip("no interpreter whose standard library the pipe's user can read")
        python, paths = found
        command = tables / "outpost"
        command.write_text(f"#!/bin/sh\nPYTHONPATH={os.pathsep.join([str(ROOT / 'milter'), *paths])} "
                           f'exec {python} -m outpost "$@"\n')
        command.chmod(0o755)
        pf.command, pf.outpost_config = command, op.config_path
        transport.write_text(f"{ALIAS} outpost-feedback:\n")
        aliases.write_text(f'abuse-nobody "|{command} feedback -c {op.config_path}"\n')
        # the pipe runs as outpost: it reads the configuration and the secret, writes the spools
        op.dir.chmod(0o755)
        op.config_path.chmod(0o644)
        shutil.chown(op.secret_file, user)
        spool.mkdir()
        shutil.chown(spool, user)
        pf.start()
        op.start()
        # the report spool: made by the milter (root here; in production Outpost runs as outpost)
        for path in [op.dir / "reports", *(op.dir / "reports").rglob("*")]:
            shutil.chown(path, user)
        yield pf, op, sink, spool
    finally:
        op.stop(graceful=False)
        pf.cleanup()
        sink.stop()
        shutil.rmtree(tables, ignore_errors=True)


def send_as(pf, identity: str, subject: str):
    msg = build_message("news@example.com", "someone@dest.example", subject=subject,
                        body="Cheap watches, click now.\n", headers={"X-AuthUser": identity})
    return send(pf.relay_port, xclient={"ADDR": "203.0.113.5"}, mail_from="news@example.com",
                rcpt_tos=["someone@dest.example"], message=msg)


def arf(delivered: bytes) -> bytes:
    return complaint(delivered, ALIAS)


def listed(spool: Path) -> dict:
    return list_data(Spool(FeedbackSettings(spool_dir=str(spool))))


def locks(op) -> list:
    store = open_store(op.store)
    try:
        return store.list_locks()
    finally:
        store.close()


def cli(op, *args: str) -> dict:
    out = subprocess.run([str(OUTPOST), *args, "-c", str(op.config_path), "--json"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def complain(pf, spool: Path, raw: bytes, counted: int, kept: int = 0) -> dict:
    """Deliver the complaint to the alias; wait until the command recorded it."""
    seen = len(pf.maillog())
    got = sendmail(pf, raw, "-i", "-f", "feedback@arf.mail.yahoo.com", ALIAS)
    assert got.returncode == 0, got.stderr
    deadline = time.monotonic() + 20
    while True:
        log = pf.maillog()[seen:]
        if "relay=outpost-feedback" in log:
            assert "status=sent" in log, log           # not deferred (75) nor bounced
            pf.drain()
            got = listed(spool)
            assert len(got["counted"]) == counted and len(got["unattributed"]) == kept, got
            return got
        assert time.monotonic() < deadline, log
        time.sleep(0.05)


def test_complaints_lock_the_identity_and_only_it(relay):
    pf, op, sink, spool = relay
    sink.clear()
    assert send_as(pf, "alice@example.com", "one").accepted
    assert send_as(pf, "alice@example.com", "two").accepted
    first, second = sink.wait_for(2, timeout=20)

    got = complain(pf, spool, arf(first.data), counted=1)
    [item] = got["counted"]
    assert (item["user"], item["identity"], item["identity_complaints"]) == (
        "webfarm", "alice@example.com", 1)
    assert item["feedback_type"] == "abuse" and item["locked"] == []
    assert locks(op) == []

    # the same complaint again (a retry, a duplicate report): not counted twice
    complain(pf, spool, arf(first.data), counted=1)
    assert locks(op) == []

    got = complain(pf, spool, arf(second.data), counted=2)
    assert sorted(i["identity_complaints"] for i in got["counted"]) == [1, 2]
    [lock] = locks(op)
    assert (lock.key, lock.by, lock.reason) == (
        "webfarm/alice@example.com", "complaints", "2 complaints in 86400s")
    # ... and reported to the abuse desk, as the automatic lock is
    from outpost.effects.reports import Spool as ReportSpool
    from outpost.effects.reports import list_items
    reported = [i for i in list_items(ReportSpool(str(op.dir / "reports"))) if i.kind == "complaints"]
    assert [i.identity for i in reported] == ["webfarm/alice@example.com"], reported

    refused = send_as(pf, "alice@example.com", "three")
    assert not refused.accepted
    assert refused.code == 451 and "suspended" in refused.text, refused
    assert send_as(pf, "bob@example.com", "from bob").accepted     # another identity: untouched

    # learn_from_complaints: the reported messages were fed to Bayes as spam
    store = open_store(op.store)
    try:
        assert Model.from_bytes(store.get_blob(MODEL_BLOB) or b"").nspam == 2
    finally:
        store.close()


def test_an_unattributable_complaint_is_kept(relay):
    pf, op, sink, spool = relay
    before = listed(spool)
    forged = build_message("alice@example.com", "x@dest.example", subject="forged",
                           headers={"X-Outpost-ID": "A" * 120})
    complain(pf, spool, arf(forged), counted=len(before["counted"]),
             kept=len(before["unattributed"]) + 1)
    shown = cli(op, "feedback", "list")                    # the command's own listing
    [kept] = shown["unattributed"]
    assert kept["reason"].startswith("X-Outpost-ID not valid"), kept
    assert kept["from"] == "Yahoo! Mail AntiSpam Feedback <feedback@arf.mail.yahoo.com>"
    assert (spool / "unattributed" / f"{kept['id']}.eml").read_bytes().rstrip().endswith(b"2711346--")


def test_an_alias_pipe_run_as_nobody_is_told_why_and_retried(relay):
    """The alias pipe runs as nobody, which cannot write the store and the
    spool: exit 75 (deferred, nothing lost) with the reason in the maillog."""
    pf, op, sink, spool = relay
    before = listed(spool)
    seen = len(pf.maillog())
    got = sendmail(pf, b"Subject: complaint\r\n\r\nX-Outpost-ID: none\r\n", "-i", "-f",
                   "feedback@arf.mail.yahoo.com", NOBODY_ALIAS)
    assert got.returncode == 0, got.stderr
    deadline = time.monotonic() + 20
    while "status=deferred" not in (log := pf.maillog()[seen:]):
        assert "status=sent" not in log and "status=bounced" not in log, log
        assert time.monotonic() < deadline, log
        time.sleep(0.05)
    assert "feedback runs as user nobody" in log and "cannot write feedback.spool_dir" in log, log
    assert "run it as the user Outpost runs as" in log
    # the local agent logs the deferral before the queue manager has moved
    # the message out of the active queue: delete it once it has left.  It
    # may leave for the incoming queue rather than the deferred one: with the
    # harness's 1 s queue runs the queue manager can take it back while the
    # local agent still holds its lock ("skipped, still being delivered"),
    # and then parks it in incoming for 60 s
    qid = re.search(r"(\w+): to=<[^>]*>, .*status=deferred", log).group(1)
    deadline = time.monotonic() + 20
    while any((pf.queue_dir / "active").rglob(qid)):
        assert time.monotonic() < deadline, pf.maillog()[-2000:]
        time.sleep(0.05)
    pf.postsuper("-d", qid)
    assert qid not in pf.in_flight() and qid not in {m.queue_id for m in pf.queue()}
    assert listed(spool) == before
