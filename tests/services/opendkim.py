"""Verify DKIM signatures with OpenDKIM's library (libopendkim, Debian
``libopendkim11``) through ctypes.

``opendkim-testmsg`` (opendkim-tools 2.11.0~beta2-8) fails on every input
here with ``dkim_chunk(): Syntax error``, so this drives the same library
calls the opendkim milter makes: ``dkim_verify`` → ``dkim_header`` per
field → ``dkim_eoh`` → ``dkim_body`` → ``dkim_eom`` → ``dkim_getsiglist``.

libopendkim resolves keys with libresolv, which reads only
``/etc/resolv.conf`` (port 53).  :func:`opendkim_verify` therefore runs this
module as a child process inside a private mount namespace whose
resolv.conf names the test NSD's extra loopback address (see
``tests.services.dns.run_with_resolver``).

Run as a script it reads a message (CRLF or LF) on stdin and prints one line
per signature: ``<domain> <selector> pass|fail <flags> <bh>``.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys

DKIM_STAT_OK = 0
DKIM_STAT_NOSIG = 2
DKIM_SIGFLAG_PASSED = 0x04
DKIM_SIGBH_MATCH = 0
LIB = "libopendkim.so.11"


def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL(LIB)
    lib.dkim_init.restype = ctypes.c_void_p
    lib.dkim_init.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.dkim_verify.restype = ctypes.c_void_p
    lib.dkim_verify.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p,
                                ctypes.POINTER(ctypes.c_int)]
    for fn in ("dkim_header", "dkim_body"):
        getattr(lib, fn).argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.dkim_eoh.argtypes = [ctypes.c_void_p]
    lib.dkim_eom.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_bool)]
    lib.dkim_getsiglist.argtypes = [ctypes.c_void_p,
                                    ctypes.POINTER(ctypes.POINTER(ctypes.c_void_p)),
                                    ctypes.POINTER(ctypes.c_int)]
    lib.dkim_sig_getflags.restype = ctypes.c_uint
    lib.dkim_sig_getflags.argtypes = [ctypes.c_void_p]
    lib.dkim_sig_getbh.argtypes = [ctypes.c_void_p]
    for fn in ("dkim_sig_getdomain", "dkim_sig_getselector"):
        getattr(lib, fn).restype = ctypes.c_char_p
        getattr(lib, fn).argtypes = [ctypes.c_void_p]
    lib.dkim_getresultstr.restype = ctypes.c_char_p
    lib.dkim_free.argtypes = [ctypes.c_void_p]
    lib.dkim_close.argtypes = [ctypes.c_void_p]
    return lib


def verify_message(message: bytes) -> list[tuple[str, str, bool]]:
    """(domain, selector, passed) for every signature (in this process)."""
    message = re.sub(rb"\r?\n", b"\r\n", message)
    head, _, body = message.partition(b"\r\n\r\n")
    fields = re.split(rb"\r\n(?![ \t])", head)
    lib = _lib()
    dlib = lib.dkim_init(None, None)
    stat = ctypes.c_int(0)
    d = lib.dkim_verify(dlib, b"test", None, ctypes.byref(stat))
    if not d:
        raise RuntimeError(f"dkim_verify failed: {stat.value}")
    try:
        for f in fields:
            st = lib.dkim_header(d, f, len(f))
            if st != DKIM_STAT_OK:
                raise RuntimeError(f"dkim_header: {lib.dkim_getresultstr(st)!r} for {f[:60]!r}")
        st = lib.dkim_eoh(d)
        if st == DKIM_STAT_NOSIG:
            return []
        if st != DKIM_STAT_OK:
            raise RuntimeError(f"dkim_eoh: {lib.dkim_getresultstr(st)!r}")
        if body:
            lib.dkim_body(d, body, len(body))
        testkey = ctypes.c_bool(False)
        lib.dkim_eom(d, ctypes.byref(testkey))   # status of one sig; check all below
        sigs = ctypes.POINTER(ctypes.c_void_p)()
        n = ctypes.c_int(0)
        if lib.dkim_getsiglist(d, ctypes.byref(sigs), ctypes.byref(n)) != DKIM_STAT_OK:
            return []
        out = []
        for i in range(n.value):
            s = sigs[i]
            ok = bool(lib.dkim_sig_getflags(s) & DKIM_SIGFLAG_PASSED) and \
                lib.dkim_sig_getbh(s) == DKIM_SIGBH_MATCH
            out.append(((lib.dkim_sig_getdomain(s) or b"").decode(),
                        (lib.dkim_sig_getselector(s) or b"").decode(), ok))
        return out
    finally:
        lib.dkim_free(d)
        lib.dkim_close(dlib)


def opendkim_verify(nameserver_ip: str, message: bytes) -> list[tuple[str, str, bool]]:
    """Verify ``message`` with libopendkim in a namespace whose resolv.conf
    points at ``nameserver_ip``:53."""
    from tests.services.dns import run_with_resolver
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = run_with_resolver(nameserver_ip, [sys.executable, os.path.abspath(__file__), root],
                          input=message)
    if r.returncode != 0:
        raise RuntimeError(f"opendkim verifier failed: {r.stderr.decode(errors='replace')}")
    out = []
    for line in r.stdout.decode().splitlines():
        dom, sel, res = line.split()
        out.append((dom, sel, res == "pass"))
    return out


if __name__ == "__main__":
    for dom, sel, ok in verify_message(sys.stdin.buffer.read()):
        print(dom, sel, "pass" if ok else "fail")
