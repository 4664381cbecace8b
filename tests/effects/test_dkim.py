"""DKIM signing: keys, signatures verified by dkimpy and by libopendkim
against a real NSD serving the public keys."""

from __future__ import annotations

import os
import random
import stat

import pytest
from dkim.canonicalization import CanonicalizationPolicy
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from outpost.effects.dkim import (
    DkimKey,
    DkimSettings,
    DkimSignError,
    KeyFileMissing,
    KeyFileUnparsable,
    KeyFileUnsafe,
    KeyTooSmall,
    Signer,
    already_signed,
    keygen,
    load_keys,
    zone_line,
    zone_txt,
)
from tests.services.dns import DnsServer, dkimpy_verify
from tests.services.opendkim import opendkim_verify

DOMAIN = "example.test"
HEADERS = [
    (b"Received", b" from x by y; Thu, 1 Jan 2026 00:00:00 +0000"),
    (b"From", b" Alice <alice@example.test>"),
    (b"To", b" bob@example.org,\n\tcarol@example.org"),     # folded as libmilter gives it
    (b"Subject", b"  Hello   there "),
    (b"Date", b" Thu, 1 Jan 2026 00:00:00 +0000"),
    (b"Message-ID", b" <1@example.test>"),
    (b"MIME-Version", b" 1.0"),
    (b"Content-Type", b" text/plain; charset=utf-8"),
    (b"X-Outpost-ID", b" u1"),
    (b"X-Mailer", b" test"),
]
BODY = b"Hello Bob,\r\n\r\nsee you  tomorrow.\r\n\r\n\r\n"


@pytest.fixture(scope="module")
def keydir(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    out = {}
    for sel, typ, bits in [("r1", "rsa", 2048), ("e1", "ed25519", 0), ("r2", "rsa", 1024)]:
        out[sel] = keygen(DOMAIN, sel, typ, bits, str(d))
    return d, out


@pytest.fixture(scope="module")
def server(keydir):
    _, keys = keydir
    zone = "\n".join(f"{sel}._domainkey IN TXT ( {zone_txt(txt)} )"
                     for sel, (_, txt) in keys.items())
    extra = f"127.{random.randint(64, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"
    with DnsServer({DOMAIN: zone}, extra_ip=extra) as s:
        yield s


def settings(keydir, sels=("r1", "e1"), **kw) -> DkimSettings:
    _, keys = keydir
    alg = {"r1": "rsa", "r2": "rsa", "e1": "ed25519"}
    return DkimSettings(keys=tuple(DkimKey(DOMAIN, s, keys[s][0], alg[s]) for s in sels), **kw)


def assemble(sigs, headers=HEADERS, body=BODY) -> bytes:
    """The message as Postfix would write it after the milter prepended sigs."""
    lines = [f"{n}:{v}".encode() for n, v in sigs] + [n + b":" + v for n, v in headers]
    return b"\r\n".join(x.replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n")
                        for x in lines) + b"\r\n\r\n" + body


@pytest.mark.parametrize("canon", ["relaxed/relaxed", "simple/simple", "relaxed/simple"])
def test_dual_signature_verifies_with_dkimpy_and_opendkim(keydir, server, canon):
    signer = Signer(settings(keydir, canonicalization=canon, extra_headers=("X-Outpost-ID",)))
    sigs = signer.sign(HEADERS, BODY, DOMAIN)
    assert [n for n, _ in sigs] == ["DKIM-Signature", "DKIM-Signature"]
    assert "a=rsa-sha256" in sigs[0][1] and "a=ed25519-sha256" in sigs[1][1]
    msg = assemble(sigs)
    assert dkimpy_verify(server, msg) == [True, True]
    assert opendkim_verify(server.extra_ip, msg) == [(DOMAIN, "r1", True), (DOMAIN, "e1", True)]


@pytest.mark.parametrize("change", [
    lambda h, b: (h, b.replace(b"tomorrow", b"today")),
    lambda h, b: ([(n, v.replace(b"Hello", b"Hi")) for n, v in h], b),
    # A second From above the signed one: a verifier takes the bottom-most
    # From for each "from" in h=, so only over-signing (h=...:from) makes
    # the added one count.  (One added at the bottom breaks any signature.)
    lambda h, b: ([(b"From", b" mallory@example.test")] + h, b),
    lambda h, b: ([(n, v.replace(b"u1", b"u2")) for n, v in h], b),  # extra header signed
    lambda h, b: (h, b + b"appended\r\n"),                           # no l=
])
def test_modified_after_signing_fails(keydir, server, change):
    signer = Signer(settings(keydir, extra_headers=("X-Outpost-ID",)))
    sigs = signer.sign(HEADERS, BODY, DOMAIN)
    h, b = change(HEADERS, BODY)
    msg = assemble(sigs, h, b)
    assert dkimpy_verify(server, msg) == [False, False]
    assert [ok for *_, ok in opendkim_verify(server.extra_ip, msg)] == [False, False]


def test_unsigned_header_may_change(keydir, server):
    signer = Signer(settings(keydir, sels=("r1",)))
    sigs = signer.sign(HEADERS, BODY, DOMAIN)
    h = [(n, b" other") if n == b"X-Mailer" else (n, v) for n, v in HEADERS]
    assert dkimpy_verify(server, assemble(sigs, h)) == [True]


def test_signature_layout(keydir):
    signer = Signer(settings(keydir, sels=("r1",), extra_headers=("X-Outpost-ID",)),
                    clock=lambda: 1767225600)
    (name, value), = signer.sign(HEADERS, BODY, DOMAIN)
    assert value.startswith(" v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.test;")
    tags = dict(t.strip().split("=", 1) for t in value.replace("\n", "").split(";"))
    assert tags["s"] == "r1" and tags["t"] == "1767225600"
    assert "l" not in tags and "i" not in tags
    h = [x.strip() for x in tags["h"].split(":")]
    assert h == ["from", "to", "subject", "date", "message-id", "mime-version",
                 "content-type", "x-outpost-id", "from"]
    assert "\r" not in value
    assert all(len(line) < 80 for line in value.split("\n"))
    assert all(line[0] in " \t" for line in value.split("\n")[1:])
    assert not Signer(settings(keydir, sels=("r1",))).sign(
        HEADERS, BODY, DOMAIN, leading_space=False)[0][1].startswith(" ")


def test_many_instances_bounded(keydir, server):
    signer = Signer(settings(keydir, sels=("r1",)))
    hdrs = HEADERS + [(b"To", f" x{i}@example.org".encode()) for i in range(500)]
    (_, value), = signer.sign(hdrs, BODY, DOMAIN)
    assert len(value) < 2000
    assert dkimpy_verify(server, assemble([("DKIM-Signature", value)], hdrs)) == [True]


def test_no_from_refused(keydir):
    with pytest.raises(DkimSignError):
        Signer(settings(keydir)).sign([(b"To", b" x@example.org")], BODY, DOMAIN)


def test_unknown_domain_not_signed(keydir):
    assert Signer(settings(keydir)).sign(HEADERS, BODY, "other.test") == []


def test_bare_lf_body_and_str_headers(keydir, server):
    signer = Signer(settings(keydir, sels=("e1",)))
    sigs = signer.sign([(n.decode(), v.decode()) for n, v in HEADERS],
                       BODY.replace(b"\r\n", b"\n"), DOMAIN)
    assert dkimpy_verify(server, assemble(sigs)) == [True]


def test_already_signed(keydir):
    signer = Signer(settings(keydir))
    sigs = signer.sign(HEADERS, BODY, DOMAIN)
    signed = [(n.encode(), v.encode()) for n, v in sigs] + HEADERS
    assert already_signed(signed, DOMAIN, "r1")
    assert already_signed(signed, "EXAMPLE.test.")
    assert not already_signed(signed, DOMAIN, "zz")
    assert not already_signed(signed, "other.test")
    assert signer.already_signed(signed, DOMAIN)
    assert not signer.already_signed(HEADERS, DOMAIN)
    assert not already_signed([(b"DKIM-Signature", b" garbage;;==")], DOMAIN)


# --- key files ----------------------------------------------------------

def test_keygen_files_and_records(keydir):
    d, keys = keydir
    for path, _ in keys.values():
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert os.path.dirname(path) == str(d)
    assert keys["r1"][1].startswith("v=DKIM1; k=rsa; p=MIIB")
    assert keys["e1"][1].startswith("v=DKIM1; k=ed25519; p=")
    loaded = load_keys(settings(keydir))
    assert [k.dns_txt for k in loaded[DOMAIN]] == [keys["r1"][1], keys["e1"][1]]
    z = zone_txt(keys["r1"][1])
    assert all(len(p) <= 257 for p in z.split(" ")) and z.count('"') == 4
    assert zone_line(DOMAIN, "r1", keys["r1"][1]).startswith('r1._domainkey.example.test. IN TXT ( "v=DKIM1;')
    with pytest.raises(FileExistsError):
        keygen(DOMAIN, "r1", "rsa", 2048, str(d))


def test_key_mode_0644_refused(keydir, tmp_path):
    _, keys = keydir
    p = tmp_path / "k.pem"
    p.write_bytes(open(keys["r1"][0], "rb").read())
    os.chmod(p, 0o644)
    with pytest.raises(KeyFileUnsafe) as e:
        load_keys(DkimSettings(keys=(DkimKey(DOMAIN, "s", str(p)),)))
    assert e.value.path == str(p) and str(p) in str(e.value)
    os.chmod(p, 0o620)
    with pytest.raises(KeyFileUnsafe):
        load_keys(DkimSettings(keys=(DkimKey(DOMAIN, "s", str(p)),)))
    os.chmod(p, 0o400)
    assert load_keys(DkimSettings(keys=(DkimKey(DOMAIN, "s", str(p)),)))


def test_key_missing_unparsable_small_wrongtype(keydir, tmp_path):
    _, keys = keydir
    with pytest.raises(KeyFileMissing, match="nope.pem"):
        load_keys(DkimSettings(keys=(DkimKey(DOMAIN, "s", str(tmp_path / "nope.pem")),)))
    bad = tmp_path / "bad.pem"
    bad.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    os.chmod(bad, 0o600)
    with pytest.raises(KeyFileUnparsable, match="bad.pem"):
        load_keys(DkimSettings(keys=(DkimKey(DOMAIN, "s", str(bad)),)))
    with pytest.raises(KeyFileUnparsable, match="not an rsa key"):
        load_keys(DkimSettings(keys=(DkimKey(DOMAIN, "s", keys["e1"][0], "rsa"),)))
    with pytest.raises(KeyTooSmall):
        load_keys(DkimSettings(keys=(DkimKey(DOMAIN, "s", keys["r2"][0]),), min_rsa_bits=2048))


def test_dkimpy_format_ed25519_key(keydir, server, tmp_path):
    # base64 seed as written by dkimpy's dknewkey
    from cryptography.hazmat.primitives import serialization
    _, keys = keydir
    key = serialization.load_pem_private_key(open(keys["e1"][0], "rb").read(), None)
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    import base64
    p = tmp_path / "seed.key"
    p.write_bytes(base64.b64encode(raw) + b"\n")
    os.chmod(p, 0o600)
    signer = Signer(DkimSettings(keys=(DkimKey(DOMAIN, "e1", str(p), "ed25519"),)))
    assert dkimpy_verify(server, assemble(signer.sign(HEADERS, BODY, DOMAIN))) == [True]


def test_settings_validation(keydir):
    with pytest.raises(ValueError, match="more than one rsa"):
        settings(keydir, sels=("r1", "r2"))
    with pytest.raises(ValueError, match="canonicalization"):
        settings(keydir, canonicalization="loose/relaxed")
    with pytest.raises(ValueError, match="must not be signed"):
        settings(keydir, extra_headers=("Received",))
    with pytest.raises(ValueError, match="algorithm"):
        DkimKey(DOMAIN, "s", "/k", "dsa")
    with pytest.raises(ValueError, match="selector"):
        DkimKey(DOMAIN, "bad selector", "/k")


# -- streamed body hash: dkimpy's whole-body result, for any chunking -------------------------

_STREAM_PIECES = st.lists(st.sampled_from([b"a", b"xy", b" ", b"  ", b"\t", b"\r\n", b"\r", b"\n",
                                           b" \r\n", b"\t\r\n", b"\r\n\r\n", b"\r\n \r\n\t\r\n",
                                           b"\r\n" * 7, b" " * 9, b"\xe9", b" " * 40,
                                           b"\t \t" * 7, b"\r\r", b"\r \r", b" \r", b"\t\r"]),
                          max_size=60)


def _whole_body_hash(canon: CanonicalizationPolicy, body: bytes) -> bytes:
    """bh= as dkimpy computes it over the whole body (line ends as on the wire)."""
    import hashlib
    import re
    return hashlib.sha256(canon.canonicalize_body(re.sub(rb"\r?\n", b"\r\n", body))).digest()


@hsettings(max_examples=600, deadline=None)
@given(pieces=_STREAM_PIECES, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
       relaxed=st.booleans())
def test_streamed_body_hash_equals_dkimpy(pieces, cuts, relaxed):
    from outpost.effects.dkim import BodyHasher
    canon = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed" if relaxed else b"simple/simple")
    body = b"".join(pieces)
    hasher = BodyHasher(relaxed)
    last = 0
    for cut in sorted({min(c, len(body)) for c in cuts}) + [len(body)]:
        hasher.update(body[last:cut])                 # empty chunks too
        last = cut
    assert hasher.digest() == _whole_body_hash(canon, body)


@pytest.mark.parametrize("relaxed", [True, False])
@pytest.mark.parametrize("body", [
    b"", b"\r\n", b"\r\n" * 100_001, b"x", b"x\r", b"x\r\n\r\n\r\n", b"   ", b"  \r\n", b"\r\n   ",
    b"a  \r\n\r\n \r\n\t\r\nb\r\n\r\n", b"line\r\n" + b" " * 70_000 + b"\r\n" * 70_000,
    b"x" * 200_000 + b" \t " + b"\r\n" * 3 + b"y\r\n",
    # every run length up to past the halving passes, tabs among the spaces
    b"".join(b"w" + b" \t"[n % 2:n % 2 + 1] * n + b"\r\n" * (n % 3) for n in range(70)) * 50,
])
def test_streamed_body_hash_edge_cases(body, relaxed):
    from outpost.effects.dkim import BodyHasher
    canon = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed" if relaxed else b"simple/simple")
    for size in (1, 2, 3, 4099, 65536):
        step = size if len(body) < 5000 else max(size, 4099)    # long bodies: not byte by byte
        hasher = BodyHasher(relaxed)
        for i in range(0, len(body), step):
            hasher.update(body[i:i + step])
        assert hasher.digest() == _whole_body_hash(canon, body), size


@pytest.mark.parametrize("canon", ["relaxed/relaxed", "simple/simple", "relaxed/simple"])
def test_streamed_signature_verifies_with_dkimpy_and_opendkim(keydir, server, canon):
    """sign() with a body hashed chunk by chunk: the same signature as
    with the whole body, verified by dkimpy and OpenDKIM."""
    signer = Signer(settings(keydir, canonicalization=canon), clock=lambda: 1_790_000_000)
    body = BODY + b"a  line with  blanks \r\n" * 3000 + b"\r\n \r\n\r\n"
    hasher = signer.body_hasher()
    for i in range(0, len(body), 4093):
        hasher.update(body[i:i + 4093])
    sigs = signer.sign(HEADERS, hasher, DOMAIN)
    assert sigs == signer.sign(HEADERS, body, DOMAIN)
    msg = assemble(sigs, body=body)
    assert dkimpy_verify(server, msg) == [True, True]
    assert opendkim_verify(server.extra_ip, msg) == [(DOMAIN, "r1", True), (DOMAIN, "e1", True)]


def test_streamed_hash_of_other_canonicalisation_refused(keydir):
    from outpost.effects.dkim import BodyHasher
    signer = Signer(settings(keydir, canonicalization="relaxed/relaxed"))
    with pytest.raises(DkimSignError):
        signer.sign(HEADERS, BodyHasher(relaxed=False), DOMAIN)
