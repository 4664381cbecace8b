"""Complaints through a real Sendmail and the shipped feedback mailer
(``contrib/sendmail/outpost-feedback.mc``): a message goes out through
Sendmail + Outpost, a receiver's ARF complaint about its delivered copy comes
back, Sendmail routes the feedback domain to the ``outpostfbl`` mailer by its
mailertable (as the fragment's comment says to), and the mailer runs
``outpost feedback`` as ``outpost``: the complaint is counted, the reported
message learned, and the second complaint locks the identity.

The mailer definition is the shipped one with only its paths swapped (the
command, its working directory, the configuration); its flags, ``U=`` and
``T=`` are as shipped.  The complaint is posted on Sendmail's command line,
which no milter sees, as on an abuse mailbox's MX.  The tests of
test_feedback_postfix.py cover the command's behaviour; this one what
Sendmail hands it (a ``From `` line first: the mailer has no ``n`` flag)
and what it makes of the exit status."""

from __future__ import annotations

import shutil
import subprocess
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
from tests.services.poll import wait_until
from tests.services.sendmail import REPO_ROOT, SendmailInstance
from tests.services.serviceuser import ensure_user, service_python
from tests.services.sink import SmtpSink
from tests.services.smtp import build_message, send

from .outpost_proc import ROOT, Outpost

FRAGMENT = REPO_ROOT / "contrib" / "sendmail" / "outpost-feedback.mc"
DOMAIN = "fbl.example.net"
ALIAS = f"abuse-fbl@{DOMAIN}"
CONFIG = textwrap.dedent("""\
    hostname: relay.example.net
    report_abuse_to: abuse@example.net
    domains: [example.com]
    defaults:
      lock: {after_complaints: 2, complaint_window: 1d, duration: 1h}
    users:
      - name: webfarm              # Sendmail has no XCLIENT: the test client is 127.0.0.1
        type: ip
        ips: [127.0.0.1/32]
        domains: [example.com]
        identity_headers:
          - {header: X-AuthUser}
    feedback:
      spool_dir: SPOOL
      learn_from_complaints: true
    """)


def rendered_fragment(command: Path, workdir: Path, config: Path) -> str:
    """The shipped mailer with this test's paths (and nothing else) swapped."""
    text = FRAGMENT.read_text()
    for shipped in (" /usr/bin/outpost feedback", "D=/var/lib/outpost,", "-c /etc/outpost/outpost.yaml",
                    "U=outpost:outpost,", "F=lsDFMoqeu,"):
        assert shipped in text, f"{FRAGMENT} no longer says {shipped!r}: update this test"
    return (text.replace(" /usr/bin/outpost feedback", f" {command} feedback")
            .replace("D=/var/lib/outpost,", f"D={workdir},")
            .replace("-c /etc/outpost/outpost.yaml", f"-c {config}"))


@pytest.fixture(scope="module")
def relay():
    user = ensure_user("outpost").pw_name                # the mailer's U=outpost:outpost
    found = service_python()
    if found is None:
        pytest.skip("no interpreter whose standard library the mailer's user can read")
    python, paths = found
    tables = Path(tempfile.mkdtemp(prefix="outpost-fbl-sm-"))
    tables.chmod(0o755)
    spool, state, home = tables / "feedback", tables / "state", tables / "home"
    for d in (spool, state, home):
        d.mkdir()
    (state / "state.db").touch()
    for path in (spool, state, state / "state.db", home):
        shutil.chown(path, user, user)
    command = tables / "outpost"                         # what P= runs
    command.write_text(f"#!/bin/sh\nPYTHONPATH={':'.join([str(ROOT / 'milter'), *paths])} "
                       f'exec {python} -m outpost "$@"\n')
    command.chmod(0o755)
    sink = SmtpSink().start()
    sm = SendmailInstance(sink_port=sink.port, mc_extra=[
        f"FEATURE(`mailertable', `hash -T<TMPF> {tables}/mailertable')dnl"])
    op = Outpost(sm.milter_socket, CONFIG.replace("SPOOL", str(spool)),
                 store=f"sqlite:///{state}/state.db")
    try:
        op.dir.chmod(0o755)                              # the mailer reads the configuration
        op.config_path.chmod(0o644)
        shutil.chown(op.secret_file, user)
        (tables / "outpost-feedback.mc").write_text(rendered_fragment(command, home, op.config_path))
        sm.mc_tail = (f"include(`{tables}/outpost-feedback.mc')dnl",)
        sm.build()
        subprocess.run([str(sm.dist.makemap), "-C", str(sm.cf_path), "hash", str(tables / "mailertable")],
                       input=f"{DOMAIN}\toutpostfbl:fbl\n", text=True, check=True, timeout=30)
        op.start()
        sm.start()
        for path in [op.dir / "reports", *(op.dir / "reports").rglob("*")]:
            shutil.chown(path, user)                     # made by the milter (root here)
        yield sm, op, sink, spool
    finally:
        op.stop(graceful=False)
        sm.cleanup()
        sink.stop()
        shutil.rmtree(tables, ignore_errors=True)


def arf(delivered: bytes) -> bytes:
    return complaint(delivered, ALIAS)


def counted(spool: Path) -> list:
    return list_data(Spool(FeedbackSettings(spool_dir=str(spool))))["counted"]


def complain(sm, spool: Path, raw: bytes, n: int) -> list:
    """Post the complaint on Sendmail's command line; wait until the mailer
    delivered it (``stat=Sent``: exit 0) and the command counted it."""
    seen = len(sm.maillog())
    sm.sendmail("-i", "-f", "feedback@arf.mail.yahoo.com", ALIAS,
                input=raw.decode("utf-8", "surrogateescape").replace("\r\n", "\n"))
    deadline = time.monotonic() + 30
    while "mailer=outpostfbl" not in (log := sm.maillog()[seen:]):
        assert time.monotonic() < deadline, log
        time.sleep(0.05)
    assert "stat=Sent" in log, log                      # not deferred (75) nor bounced
    return wait_until(lambda: (lambda got: got if len(got) == n else None)(counted(spool)),
                      what=f"{n} counted complaint(s)", timeout=10)


def send_as(sm, identity: str, subject: str):
    msg = build_message("news@example.com", "someone@dest.example", subject=subject,
                        body="Cheap watches, click now.\n", headers={"X-AuthUser": identity})
    return send(sm.relay_port, mail_from="news@example.com", rcpt_tos=["someone@dest.example"],
                message=msg)


def test_a_complaint_through_the_shipped_sendmail_mailer_is_counted_and_learned(relay):
    sm, op, sink, spool = relay
    assert send_as(sm, "alice@example.com", "one").accepted
    assert send_as(sm, "alice@example.com", "two").accepted
    first, second = sink.wait_for(2, timeout=20)
    assert first.headers("X-Outpost-User") == ["webfarm"]

    [item] = complain(sm, spool, arf(first.data), 1)
    assert (item["user"], item["identity"], item["identity_complaints"]) == (
        "webfarm", "alice@example.com", 1)
    assert item["feedback_type"] == "abuse"
    records = list((spool / "counted").glob("*.json"))
    assert records and {p.stat().st_uid for p in records} == {ensure_user("outpost").pw_uid}   # U=

    got = complain(sm, spool, arf(second.data), 2)
    assert sorted(i["identity_complaints"] for i in got) == [1, 2]
    store = open_store(op.store)
    try:
        [lock] = store.list_locks()
        assert (lock.key, lock.by) == ("webfarm/alice@example.com", "complaints")
        assert Model.from_bytes(store.get_blob(MODEL_BLOB) or b"").nspam == 2
    finally:
        store.close()
