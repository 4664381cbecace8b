"""How libmilter reaches the adapter: negotiation (``Milter.Base``'s, from
the ``@Milter.noreply`` callbacks) and the no-reply stages, called the way
``Milter.runmilter`` calls them (pymilter's ``*_bytes`` entry points), with
pymilter's real NOREPLY (not patched as in the TestCtx tests)."""

import functools

import Milter
import pytest

from outpost.adapter.milter import OutpostMilter

ALL_STEPS = 0x1FFFFF            # an MTA offering every protocol step and no-reply option


@pytest.fixture
def milter(memory_runtime):
    return functools.partial(OutpostMilter, memory_runtime)


def test_no_reply_only_for_connect_header_eoh_and_body(milter):
    m = milter()
    opts = [0, ALL_STEPS, 0, 0]
    m.negotiate(opts)
    for kept in (Milter.P_NR_CONN, Milter.P_NR_HDR, Milter.P_NR_EOH, Milter.P_NR_BODY,
                 Milter.P_HDR_LEADSPC):
        assert opts[1] & kept, hex(kept)
    for dropped in (Milter.P_NR_MAIL, Milter.P_NR_RCPT, Milter.P_NOMAIL, Milter.P_NOEOH,
                    Milter.P_NORCPT, Milter.P_NOHDRS, Milter.P_NOBODY):
        assert not opts[1] & dropped, hex(dropped)
    assert opts[1] & Milter.P_NOHELO                      # a stage Outpost has no use for


@pytest.mark.parametrize("protocol, answer", [
    (Milter.P_NR_CONN | Milter.P_NR_HDR | Milter.P_NR_EOH | Milter.P_NR_BODY, Milter.NOREPLY),
    (0, Milter.CONTINUE),                 # an MTA without no-reply stages waits for CONTINUE
])
def test_no_reply_stages_answer_as_negotiated(milter, protocol, answer):
    assert Milter.NOREPLY != Milter.CONTINUE
    m = milter()
    m._protocol = protocol
    assert m.connect("client.example", 2, ("192.0.2.5", 4000)) == answer
    assert m.envfrom_bytes(b"<bob@example.com>") == Milter.CONTINUE
    assert m.header_bytes("Subject", b"hello") == answer
    assert m.eoh() == answer
    assert m.body(b"text\r\n") == answer
    msg = m.session.message
    assert msg.headers == [("Subject", "hello")] and msg.body_size == 6


def test_bytes_entry_points_decode_like_milter_base(milter):
    m = milter()
    m._protocol = Milter.P_NR_CONN | Milter.P_NR_HDR
    m.connect("client.example", 2, ("192.0.2.5", 4000))
    assert m.envfrom_bytes(b"<bob@example.com>", b"SIZE=100") == Milter.CONTINUE
    assert m.envrcpt_bytes(b"<x@dest.example>", b"ORCPT=rfc822;x@dest.example") \
        == Milter.CONTINUE
    raw = b"caf\xc3\xa9 \xff"              # UTF-8, then a byte that is not
    assert m.header_bytes("Subject", raw) == Milter.NOREPLY
    msg = m.session.message
    assert msg.sender == "bob@example.com" and msg.recipients == ["x@dest.example"]
    name, value = msg.headers[0]
    assert (name, value) == ("Subject", "café \udcff")
    assert value.encode("utf-8", "surrogateescape") == raw       # the original bytes are kept


@pytest.mark.parametrize("stage", ["header", "body"])
@pytest.mark.parametrize("protocol, answer", [
    (Milter.P_NR_HDR | Milter.P_NR_BODY, Milter.NOREPLY),   # anything else would break the protocol
    (0, Milter.TEMPFAIL),                                    # the MTA waits: refuse now
])
def test_error_at_a_no_reply_stage(milter, monkeypatch, stage, protocol, answer):
    m = milter()
    m._protocol = protocol
    m.envfrom_bytes(b"<bob@example.com>")

    def broken(*_args):
        raise RuntimeError("boom")
    monkeypatch.setattr(m.policy, stage, broken)
    got = m.header_bytes("Subject", b"x") if stage == "header" else m.body(b"x")
    assert got == answer
    assert m.eom() == Milter.TEMPFAIL          # never accepted after the failure
