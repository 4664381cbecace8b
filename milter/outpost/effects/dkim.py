"""DKIM signing for outgoing mail.

Header selection, canonicalisation and the DKIM-Signature layout come from
dkimpy (``CanonicalizationPolicy``, ``dkim.hash_headers``, ``dkim.fold``,
``dkim.RE_BTAG``), composed exactly as ``dkim.DKIM.sign`` does.  Only the
private-key operation differs: it runs in OpenSSL through ``cryptography``
(RSA PKCS#1 v1.5 over the prehashed SHA-256 digest, or Ed25519 over the
digest as RFC 8463 specifies) instead of dkimpy's pure-Python RSA.  That is
the one place this module reaches past dkimpy's public ``sign``, and it
passes the project's 3 % bar many times over: RSA-2048 signatures per
second in one process 590 against 69 for plain dkimpy (8.5×; ``python -m
bench.dkim_sign``), the difference being most of the milter's CPU per
message.  The body hash is made as the body streams in
(:class:`BodyHasher`, constant memory).  Tests verify every signature with
dkimpy and with OpenDKIM.

Keys are loaded once (:func:`load_keys`) and refused when missing,
unparsable, accessible by group/others, or RSA smaller than ``min_rsa_bits``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import stat
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Literal, Mapping, Optional, Sequence, Union, get_args

import dkim as dkimpy
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils
from dkim.canonicalization import CanonicalizationPolicy, InvalidCanonicalizationPolicyError
from dkim.util import InvalidTagValueList, parse_tag_value

from ..core.stamps import occurrences

#: A signing key's algorithm (``domains.<d>.dkim.algorithm``).
DkimAlgorithm = Literal["rsa", "ed25519"]
#: The ``a=`` tag of each algorithm.
ALGORITHMS: dict[str, bytes] = {"rsa": b"rsa-sha256", "ed25519": b"ed25519-sha256"}
assert tuple(ALGORITHMS) == get_args(DkimAlgorithm)
#: Signed when present (RFC 6376 5.4.1 recommendations that outbound mail has).
SIGNED_HEADERS = ("From", "To", "Cc", "Subject", "Date", "Message-ID", "MIME-Version",
                  "Content-Type", "Content-Transfer-Encoding", "Reply-To")
#: Instances of one header name signed at most (bottom-up); keeps h= bounded.
MAX_INSTANCES = 3
#: libmilter refuses added header fields longer than this.
MAX_HEADER_LEN = 2048
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
_HNAME = re.compile(r"^[\x21-\x39\x3b-\x7e]{1,76}$")

PrivateKey = Union[rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey]
Headers = Sequence[tuple[Union[bytes, str], Union[bytes, str]]]


class DkimError(Exception):
    """Base class of DKIM errors."""


class DkimKeyError(DkimError):
    """A key file cannot be used; ``path`` names it."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"DKIM key {path}: {reason}")
        self.path = path
        self.reason = reason


class KeyFileMissing(DkimKeyError):
    pass


class KeyFileUnsafe(DkimKeyError):
    """Readable or writable by group or others (like OpenDKIM's RequireSafeKeys)."""


class KeyFileUnparsable(DkimKeyError):
    pass


class KeyTooSmall(DkimKeyError):
    pass


class DkimSignError(DkimError):
    """The message cannot be signed (no From, signature too long…).  The
    adapter answers 451 4.3.0."""


def _is_domain(name: str) -> bool:
    labels = name.rstrip(".").split(".")
    return len(name) <= 253 and len(labels) >= 1 and all(_LABEL.match(x) for x in labels)


@dataclass(frozen=True)
class DkimKey:
    """One signing key of a domain (``domains.<d>.dkim`` entries)."""

    domain: str
    selector: str
    key: str                       # path of the private key file
    algorithm: DkimAlgorithm = "rsa"

    def __post_init__(self) -> None:
        object.__setattr__(self, "domain", self.domain.rstrip(".").lower())
        if not _is_domain(self.domain):
            raise ValueError(f"dkim: {self.domain!r} is not a domain name")
        if not all(_LABEL.match(x) for x in self.selector.split(".")):
            raise ValueError(f"dkim: selector {self.selector!r} of {self.domain} is invalid")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"dkim: algorithm of {self.domain}/{self.selector} must be "
                             f"rsa or ed25519, got {self.algorithm!r}")
        if not self.key:
            raise ValueError(f"dkim: key path of {self.domain}/{self.selector} is empty")


@dataclass(frozen=True)
class DkimSettings:
    """``dkim:`` settings.

    keys: all DkimKey entries; per domain at most one rsa and one ed25519
    (both → dual signature).  canonicalization: ``header/body``, each simple
    or relaxed.  extra_headers: further names signed when present (Outpost's
    X-Outpost-* headers).  min_rsa_bits: smaller RSA keys are refused.
    """

    keys: tuple[DkimKey, ...] = ()
    canonicalization: str = "relaxed/relaxed"
    extra_headers: tuple[str, ...] = ()
    min_rsa_bits: int = 1024

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", tuple(self.keys))
        object.__setattr__(self, "extra_headers", tuple(self.extra_headers))
        seen = set()
        for k in self.keys:
            if (k.domain, k.algorithm) in seen:
                raise ValueError(f"dkim: {k.domain} has more than one {k.algorithm} key")
            seen.add((k.domain, k.algorithm))
        try:
            CanonicalizationPolicy.from_c_value(self.canonicalization.encode("ascii"))
        except (InvalidCanonicalizationPolicyError, UnicodeEncodeError):
            raise ValueError("dkim.canonicalization must be simple|relaxed/simple|relaxed, "
                             f"got {self.canonicalization!r}") from None
        if "/" not in self.canonicalization:
            raise ValueError("dkim.canonicalization needs header/body, e.g. relaxed/relaxed")
        for h in self.extra_headers:
            if not _HNAME.match(h):
                raise ValueError(f"dkim.extra_headers: {h!r} is not a header name")
            if h.lower().encode() in dkimpy.DKIM.SHOULD_NOT:
                raise ValueError(f"dkim.extra_headers: {h} must not be signed")
        if self.min_rsa_bits < 1024:
            raise ValueError("dkim.min_rsa_bits must be >= 1024")


@dataclass(frozen=True)
class LoadedKey:
    """A key file read and checked by :func:`load_keys`."""

    spec: DkimKey
    private: PrivateKey = field(repr=False)
    public_p: str                 # base64 p= value for the DNS record

    @property
    def dns_txt(self) -> str:
        return f"v=DKIM1; k={self.spec.algorithm}; p={self.public_p}"


def public_p(key: PrivateKey) -> str:
    """The DKIM ``p=`` value: SubjectPublicKeyInfo (RSA) or raw key (Ed25519)."""
    pub = key.public_key()
    if isinstance(pub, ed25519.Ed25519PublicKey):
        raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        raw = pub.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(raw).decode("ascii")


def _parse_key(data: bytes, spec: DkimKey) -> PrivateKey:
    path = spec.key
    if spec.algorithm == "ed25519" and b"-----BEGIN" not in data:
        # dkimpy's dknewkey format: base64 of the 32-byte seed
        try:
            seed = base64.b64decode(data.strip(), validate=True)
            return ed25519.Ed25519PrivateKey.from_private_bytes(seed)
        except ValueError as exc:
            raise KeyFileUnparsable(path, f"not an ed25519 key: {exc}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileUnparsable(path, f"not a PEM private key: {exc}") from None
    want = rsa.RSAPrivateKey if spec.algorithm == "rsa" else ed25519.Ed25519PrivateKey
    if not isinstance(key, want):
        raise KeyFileUnparsable(path, f"not an {spec.algorithm} key")
    return key


def load_key(spec: DkimKey, min_rsa_bits: int = 1024) -> LoadedKey:
    """Read and check one key file (raises a :class:`DkimKeyError` subclass)."""
    path = spec.key
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise KeyFileMissing(path, "file not found") from None
    except OSError as exc:
        raise KeyFileUnparsable(path, f"cannot open: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileUnparsable(path, "not a regular file")
        if st.st_mode & 0o077:
            raise KeyFileUnsafe(path, f"mode {stat.S_IMODE(st.st_mode):04o} gives access to "
                                      "group/others; chmod 600")
        data = fh.read(64 * 1024)
    key = _parse_key(data, spec)
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < min_rsa_bits:
        raise KeyTooSmall(path, f"RSA key has {key.key_size} bits, minimum {min_rsa_bits}")
    return LoadedKey(spec, key, public_p(key))


def load_keys(settings: DkimSettings) -> dict[str, tuple[LoadedKey, ...]]:
    """All configured keys by domain (RSA first), checked; raises on the
    first bad file."""
    out: dict[str, list[LoadedKey]] = {}
    for spec in settings.keys:
        out.setdefault(spec.domain, []).append(load_key(spec, settings.min_rsa_bits))
    return {d: tuple(sorted(ks, key=lambda k: k.spec.algorithm != "rsa"))
            for d, ks in out.items()}


# ---------------------------------------------------------------------------
# signing

def _b(x: Union[bytes, str]) -> bytes:
    return x if isinstance(x, bytes) else x.encode("utf-8", "surrogateescape")


_NL = re.compile(rb"\r?\n")


def _crlf(data: bytes) -> bytes:
    """Line ends as they go on the wire: every LF (with or without CR) → CRLF."""
    if data.count(b"\n") == data.count(b"\r\n"):     # already CRLF only (fast path)
        return data
    return _NL.sub(b"\r\n", data)


_CRLF_BLOCK = b"\r\n" * 32768
#: A bare CR (content, not a line end) and what can follow it inside a run
#: of blanks and line ends.
_BARE_CR = (b"\r ", b"\r\t", b"\r\r")


def _blank_prefix(data: bytes, strip: bytes) -> int:
    """The length of the longest prefix of ``data`` (CRLF line ends only)
    made of line ends and the blanks in ``strip`` (``b" \t\r\n"``; only
    line ends with ``b"\r\n"``): what ``lstrip`` takes, up to the first bare
    CR in it, which is content.  ``bytes`` searches, whatever the run: a
    regex over a chunk of blank lines cost 15-20 ns a byte."""
    end = len(data) - len(data.lstrip(strip))
    if not end:       # content first, the common case (with the suffix's: 10 µs of
        return 0      # a 2 KB body's 20; 0.4 % of a message, plain early returns)
    bare = [i for i in (data.find(p, 0, end) for p in _BARE_CR) if i >= 0]
    if data[end - 1:end] == b"\r":              # not followed by LF
        bare.append(end - 1)
    return min(bare, default=end)


def _blank_suffix(data: bytes, strip: bytes) -> int:
    """Where the longest suffix of ``data`` made of line ends and blanks
    (as :func:`_blank_prefix`) begins: what ``rstrip`` leaves, after the
    last bare CR in the part it takes."""
    start = len(data.rstrip(strip))
    if start == len(data) - 2 and data.endswith(b"\r\n"):   # the common case
        return start
    if data.endswith(b"\r"):                    # a bare CR at the very end
        return len(data)
    return max(start, *(data.rfind(p, start) + 1 for p in _BARE_CR))


#: Halving passes of :func:`_relax_blanks` before the runs left go to one
#: regex substitution: with 6, no length of run costs more than about
#: 12 ns a byte (fewer let runs of 2**n + 1 blanks cost up to 20).
_HALVINGS = 6
_SPACE_RUN = re.compile(rb"  +")


def _relax_blanks(data: bytes) -> bytes:
    """RFC 6376 3.4.4 inside a piece of body that starts and ends with
    content: every run of blanks (SP, HTAB) becomes one SP, and one before
    a CRLF goes.  Whole-piece ``bytes`` operations, whatever the number of
    runs: a tab becomes a space; each pass of ``replace`` halves every run
    of spaces (one pass for the common double space), and after
    ``_HALVINGS`` passes the runs left (each was 65 blanks or more) go to
    one regex substitution.  At most about 12 ns a byte, whatever the
    runs' lengths; a substitution per run (``[\t ]+``) and a split per
    line cost up to 43-65 ns a byte of blank-rich text: 0.4-1 s of CPU
    for 10 MB of double-spaced or tab-separated words (``bench/worst_case.py``)."""
    if b"\t" in data:                       # one-byte searches first
        data = data.replace(b"\t", b" ")
    elif b" " not in data:
        return data
    for _ in range(_HALVINGS):
        if b"  " not in data:
            break
        data = data.replace(b"  ", b" ")
    else:                                   # every pass found a run
        if b"  " in data:
            data = _SPACE_RUN.sub(b" ", data)
    if b" \r\n" in data:
        data = data.replace(b" \r\n", b"\r\n")
    return data


class BodyHasher:
    """The DKIM body hash (``bh=``) computed as the body streams in: the
    SHA-256 of dkimpy's ``canon.canonicalize_body(_crlf(body))`` without
    keeping the body.  The relaxed passes run only where a blank can change
    the text (a one-byte search first): for smtp-source's 20 KB body 0.7 ms
    → 3 µs, about a tenth of the milter's CPU per message at that size.
    Canonicalisation is defined on the whole body, but its only
    effects that reach across a chunk are a CR that may start a CRLF,
    blanks (relaxed) and line ends at the end of what came so far: those
    are held back as a count and a flag, never as bytes, so memory stays
    constant whatever the body (50 MB of blank lines included)."""

    __slots__ = ("_hash", "_relaxed", "_cr", "_nl", "_wsp", "_content", "_done")

    def __init__(self, relaxed: bool) -> None:
        self._hash = hashlib.sha256()
        self._relaxed = relaxed
        self._cr = False        # the last byte fed was a CR (it may start a CRLF)
        self._nl = 0            # line ends held back since the last content byte
        self._wsp = False       # relaxed: blanks held back after the last line end or content
        self._content = False   # some content was hashed already
        self._done: Optional[bytes] = None

    @property
    def relaxed(self) -> bool:
        """Relaxed body canonicalisation (else simple)."""
        return self._relaxed

    def update(self, chunk: Union[bytes, bytearray, memoryview]) -> None:
        """The next piece of the body, raw as it came."""
        if self._done is not None:
            raise ValueError("body hash already finished")
        data = bytes(chunk)
        if self._cr:
            data = b"\r" + data
            self._cr = False
        if data.endswith(b"\r"):
            data = data[:-1]
            self._cr = True
        if data:
            self._feed(_crlf(data))

    def _feed(self, data: bytes) -> None:
        strip = b" \t\r\n" if self._relaxed else b"\r\n"
        start = _blank_prefix(data, strip)
        if start == len(data):                       # only blanks / line ends: hold them
            self._hold(data)
            return
        self._hold(data[:start])
        cut = _blank_suffix(data, strip)             # a bare CR in the tail is content
        self._flush()
        middle = data[start:cut]
        if self._relaxed:
            middle = _relax_blanks(middle)
        self._hash.update(middle)
        self._content = True
        self._hold(data[cut:])

    def _hold(self, ws: bytes) -> None:
        if not ws:
            return
        n = ws.count(b"\r\n")
        if n:
            self._nl += n
            self._wsp = self._relaxed and len(ws) > ws.rfind(b"\r\n") + 2
        elif self._relaxed:
            self._wsp = True

    def _flush(self) -> None:
        """Hash the held-back line ends and blanks: content follows them."""
        n = self._nl
        while n > 0:
            k = min(n, len(_CRLF_BLOCK) // 2)
            self._hash.update(_CRLF_BLOCK[:2 * k])
            n -= k
        if self._wsp:
            self._hash.update(b" ")
        self._nl, self._wsp = 0, False

    def digest(self) -> bytes:
        """The raw SHA-256 of the canonical body (dkimpy's rules at the end:
        trailing empty lines dropped, one CRLF after the last line; an
        empty relaxed body is empty)."""
        if self._done is None:
            if self._cr:                             # a bare CR at the very end is content
                self._cr = False
                self._flush()
                self._hash.update(b"\r")
                self._content = True
            if self._relaxed and self._wsp:          # "x  " at the end: kept as "x \r\n"
                self._flush()
                self._hash.update(b"\r\n")
            elif self._content or not self._relaxed:
                self._hash.update(b"\r\n")
            self._done = self._hash.digest()
        return self._done

    def bh(self) -> bytes:
        """The ``bh=`` value (base64)."""
        return base64.b64encode(self.digest())


def _tags(value: Union[bytes, str]) -> dict[bytes, bytes]:
    """Tags of a DKIM-Signature value ({} if unparsable)."""
    try:
        return parse_tag_value(re.sub(rb"\s+", b"", _b(value)))
    except InvalidTagValueList:
        return {}


def already_signed(headers: Headers, domain: str, selector: Optional[str] = None) -> bool:
    """True when a DKIM-Signature with ``d=domain`` (and ``s=selector`` if
    given) is already present."""
    d = domain.rstrip(".").lower().encode()
    for name, value in headers:
        if _b(name).lower() != b"dkim-signature":
            continue
        tags = _tags(value)
        if tags.get(b"d", b"").lower() == d and (
                selector is None or tags.get(b"s", b"") == selector.encode()):
            return True
    return False


class Signer:
    """Signs messages for the domains that have keys."""

    def __init__(self, settings: DkimSettings,
                 keys: Optional[Mapping[str, Sequence[LoadedKey]]] = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.keys = dict(keys) if keys is not None else load_keys(settings)
        self.canon = CanonicalizationPolicy.from_c_value(settings.canonicalization.encode())
        self._relaxed_body = self.canon.to_c_value().endswith(b"/relaxed")
        self.clock = clock
        names = [h.lower() for h in SIGNED_HEADERS + settings.extra_headers]
        self._sign_names = frozenset(n.encode() for n in names)

    def has_key(self, domain: str) -> bool:
        return domain.rstrip(".").lower() in self.keys

    def selectors(self, domain: str) -> list[str]:
        """The selectors of ``domain``'s keys, in signing order (RSA first)."""
        return [k.spec.selector for k in self.keys.get(domain.rstrip(".").lower(), ())]

    def already_signed(self, headers: Headers, domain: str) -> bool:
        """True if any of our selectors already signed for ``domain``."""
        return any(already_signed(headers, domain, k.spec.selector)
                   for k in self.keys.get(domain.rstrip(".").lower(), ()))

    def include_headers(self, headers: Sequence[tuple[bytes, object]]) -> list[bytes]:
        """h= list: every signed name present (in message order, at most
        MAX_INSTANCES instances each), then ``from`` once more (over-signing)."""
        out = [low for low, n in occurrences(name for name, _ in headers)
               if n <= MAX_INSTANCES and low in self._sign_names]
        if b"from" not in out:
            raise DkimSignError("message has no From header")
        return out + [b"from"]

    def body_hasher(self) -> BodyHasher:
        """A streaming body hash in this signer's body canonicalisation
        (feed it the raw body chunks, then pass it to :meth:`sign`)."""
        return BodyHasher(self._relaxed_body)

    def sign(self, headers: Headers, body: Union[bytes, bytearray, memoryview, BodyHasher], domain: str,
             *, leading_space: bool = True) -> list[tuple[str, str]]:
        """DKIM-Signature header(s) for ``domain``: ``[(name, value), …]``,
        RSA first.  ``headers``: (name, value) exactly as received (value
        with its leading whitespace and folding, as pymilter's
        ``header_leading_space`` delivers); ``body``: raw body bytes, or a
        :class:`BodyHasher` that was fed them (:meth:`body_hasher`).  The
        value is folded with LF + space (libmilter style) and starts with a
        space when ``leading_space`` (for an adapter that negotiated
        ``header_leading_space``, so the field is ``DKIM-Signature: v=1…``).
        Returns [] when the domain has no key."""
        keys = self.keys.get(domain.rstrip(".").lower())
        if not keys:
            return []
        named = [(_b(n), v) for n, v in headers]
        include = self.include_headers(named)
        # Only fields named in h= count; dkimpy picks them bottom-up by name,
        # which a list keeping their order leaves unchanged.
        wanted = frozenset(include)
        cheaders = self.canon.canonicalize_headers([
            (n, _crlf(_b(v)).rstrip(b"\r\n") + b"\r\n") for n, v in named if n.lower() in wanted])
        if isinstance(body, BodyHasher):          # hashed as it streamed in
            if body.relaxed is not self._relaxed_body:
                raise DkimSignError("body hash made with another body canonicalisation")
            bodyhash = body.bh()
        else:
            cbody = self.canon.canonicalize_body(_crlf(bytes(body)))
            bodyhash = base64.b64encode(hashlib.sha256(cbody).digest())
        t = str(int(self.clock())).encode()
        out = []
        for key in keys:
            value = self._signature(key, domain.rstrip(".").lower().encode(), t, include,
                                    cheaders, bodyhash)
            text = value.decode("ascii").rstrip("\r\n").replace("\r\n", "\n")
            if len("DKIM-Signature: ") + len(text) >= MAX_HEADER_LEN:
                raise DkimSignError(f"DKIM-Signature would be {len(text)} bytes long")
            out.append(("DKIM-Signature", (" " + text) if leading_space else text))
        return out

    def _signature(self, key: LoadedKey, domain: bytes, t: bytes, include: list[bytes],
                   cheaders: list[tuple[bytes, bytes]], bodyhash: bytes) -> bytes:
        """Same steps as dkimpy's ``DomainSigner.gen_header`` (without i=, q=, l=)."""
        name = b"DKIM-Signature"
        fields = [
            (b"v", b"1"),
            (b"a", ALGORITHMS[key.spec.algorithm]),
            (b"c", self.canon.to_c_value()),
            (b"d", domain),
            (b"s", key.spec.selector.encode()),
            (b"t", t),
            (b"h", b" : ".join(include)),
            (b"bh", bodyhash),
            # placeholder forces b= onto its own line, so refolding after
            # inserting the signature keeps earlier whitespace (simple canon)
            (b"b", b"0" * 60),
        ]
        value = dkimpy.fold(b"; ".join(b"=".join(x) for x in fields), namelen=len(name))
        value = dkimpy.RE_BTAG.sub(b"\\1", value)
        hasher = hashlib.sha256()
        dkimpy.hash_headers(hasher, self.canon, cheaders, include, (name, b" " + value), {})
        digest = hasher.digest()
        if isinstance(key.private, rsa.RSAPrivateKey):
            sig = key.private.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
        else:
            sig = key.private.sign(digest)
        fields[-1] = (b"b", base64.b64encode(sig))
        return dkimpy.fold(b"; ".join(b"=".join(x) for x in fields) + b"\r\n",
                           namelen=len(name))


# ---------------------------------------------------------------------------
# key generation

def zone_txt(txt: str) -> str:
    """TXT record data split into quoted strings of at most 255 characters."""
    parts = [txt[i:i + 255] for i in range(0, len(txt), 255)]
    return " ".join(f'"{p}"' for p in parts)


def zone_line(domain: str, selector: str, txt: str) -> str:
    """A zone-file line for the selector's TXT record."""
    return f"{selector}._domainkey.{domain.rstrip('.')}. IN TXT ( {zone_txt(txt)} )"


def keygen(domain: str, selector: str, type: DkimAlgorithm = "rsa", bits: int = 2048,
           directory: str = ".", *, overwrite: bool = False) -> tuple[str, str]:
    """Create a private key file ``<directory>/<domain>.<selector>.<type>.pem``
    (mode 0600, written atomically) and return ``(path, txt)`` where txt is
    ``v=DKIM1; k=<type>; p=…`` for ``<selector>._domainkey.<domain>``."""
    spec = DkimKey(domain, selector, "-", type)
    if type == "rsa":
        if bits < 1024:
            raise ValueError("RSA keys need at least 1024 bits")
        key: PrivateKey = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    else:
        key = ed25519.Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    path = os.path.join(directory, f"{spec.domain}.{selector}.{type}.pem")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; not overwriting")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".dkim-", suffix=".tmp")  # 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path, f"v=DKIM1; k={type}; p={public_p(key)}"
