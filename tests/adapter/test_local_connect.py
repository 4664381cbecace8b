"""The adapter hands the client port to the core: Postfix's stand-in
client for sendmail(1) mail is ('127.0.0.1', 0) at connect (checked against
Postfix 3.7, see tests/e2e/test_local_door.py)."""

import socket

import Milter
import pytest

from outpost.adapter.milter import OutpostMilter


@pytest.fixture
def milter(memory_runtime):
    def make():
        m = OutpostMilter(memory_runtime)
        m._protocol = Milter.P_NR_CONN | Milter.P_NR_HDR | Milter.P_NR_BODY
        return m
    return make


@pytest.mark.parametrize("hostaddr, local", [
    (("127.0.0.1", 0), True),              # Postfix non_smtpd_milters
    (("127.0.0.1", 41234), False),         # an SMTP client on loopback
    (("192.0.2.5", 0), False),             # port 0 elsewhere is no local submission
])
def test_port_zero_on_loopback_is_a_local_session(milter, hostaddr, local):
    m = milter()
    m.connect("localhost", socket.AF_INET, hostaddr)
    assert m.session.local is local
    assert m.session.client_ip == hostaddr[0]


def test_local_session_is_refused_without_a_local_user(milter):
    m = milter()
    replies = []
    m.setreply = lambda *reply: replies.append(reply)       # no libmilter context here
    m.connect("localhost", socket.AF_INET, ("127.0.0.1", 0))
    assert m.envfrom_bytes(b"<www@example.com>") == Milter.REJECT
    assert replies == [("550", "5.7.1", "Local submission (sendmail) is not an authorized outgoing sender")]
