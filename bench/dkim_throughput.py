"""End-to-end DKIM signing throughput: Postfix alone, Postfix + OpenDKIM,
Postfix + dkimpy-milter and Postfix + Outpost (signing off / on), one run.

    smtp-source (N sessions) -> throw-away Postfix (IP-relay listener of
    contrib/postfix) [+ milter] -> smtp-sink

Configurations (each its own Postfix instance; one is loaded at a time):

* ``postfix``         Postfix alone,
* ``opendkim``        Postfix + OpenDKIM (Debian ``opendkim``), ``Mode s``,
                      relaxed/relaxed, started here with a private config,
* ``dkimpy``          Postfix + dkimpy-milter (PyPI, baseline only) from a
                      throw-away venv (``--dkimpy-venv``, created on demand),
* ``outpost-nosign``  Postfix + Outpost, no DKIM key, spam engine off,
* ``outpost-sign``    Postfix + Outpost, RSA key for example.com, spam off,
* ``outpost-spam``    Outpost signing with the spam engine on (``--spam``;
                      ``on_spam: accept``: smtp-source's bodies score as spam).

Every signer uses the same generated RSA key (``--bits``, default 2048),
domain ``example.com``, selector ``bench``.  smtp-source sends from
``bench@example.com`` (its From: header is the envelope sender), so every
signer signs every message.  Before timing, a sample of each configuration
is routed (transport_maps) to a capturing sink and checked: signing
configurations must deliver every sample message with a DKIM-Signature
``d=example.com; s=bench`` that verifies against the public key (dkimpy,
key served from memory, no DNS); the others must deliver none.

Rounds interleave the configurations and alternate their order.  Reported:
accepted msgs/s (median over rounds, min-max) and the ratios to Postfix
alone and to OpenDKIM (median of same-round ratios).

``--outpost-repo DIR`` runs Outpost from another checkout (its ``milter/``
on PYTHONPATH).  Run as root (Postfix instances, milters on unix sockets).

    /work/venv/bin/python -m bench.dkim_throughput [--messages 1000]
        [--rounds 3] [--sizes 2048,20480] [--spam] [--outpost-repo DIR]
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dkim.util import parse_tag_value

from bench.throughput import BenchError, bench_site, run_rounds, run_source
from tests.services.milter import MilterProcess
from tests.services.postfix import PostfixInstance
from tests.services.sink import SinkTimeout, SmtpSink

REPO = Path(__file__).resolve().parents[1]

DOMAIN = "example.com"
SELECTOR = "bench"
VERIFY_RCPT = "verify@example.net"
DEFAULT_DKIMPY_VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / \
    "outpost-bench" / "dkimpy-milter-venv"


@dataclass
class Setup:
    """One configuration under test."""

    name: str
    milter_argv: list[str] | None
    signs: bool
    env: dict[str, str] | None = None
    cwd: Path | None = None
    conf: Path | None = None       # milter config file naming ``{socket}``
    instance: PostfixInstance | None = None
    milter: MilterProcess | None = None
    rates: dict[int, list[float]] = field(default_factory=dict)
    cpu: dict[int, list[float]] = field(default_factory=dict)   # milter µs CPU per message


# --------------------------------------------------------------------------
# Keys and milter configurations
# --------------------------------------------------------------------------

def make_key(directory: Path, bits: int) -> tuple[Path, bytes]:
    """An RSA key (PKCS#1 PEM, mode 0600) and its DKIM TXT record."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    path = directory / f"{DOMAIN}.{SELECTOR}.rsa.pem"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.TraditionalOpenSSL,
                                   serialization.NoEncryption()))
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return path, b"v=DKIM1; k=rsa; p=" + base64.b64encode(spki)


def opendkim_setup(root: Path, key: Path) -> Setup:
    """OpenDKIM in the foreground with a private signing-only config."""
    binary = shutil.which("opendkim")
    if binary is None:
        raise BenchError("opendkim not installed (apt-get install opendkim), or use --skip opendkim")
    conf = root / "opendkim.conf"
    conf.write_text(
        "Mode s\n"
        f"Domain {DOMAIN}\n"
        f"Selector {SELECTOR}\n"
        f"KeyFile {key}\n"
        "Canonicalization relaxed/relaxed\n"
        "Socket {socket}\n"
        "UMask 000\n"
        "Syslog no\n"
        # the work directory lives under /tmp (world-writable): OpenDKIM
        # would refuse the key path; the check costs nothing per message
        "RequireSafeKeys no\n")
    return Setup("opendkim", [binary, "-f", "-x", str(conf)], signs=True, conf=conf)


def ensure_dkimpy_venv(venv: Path) -> Path:
    """``dkimpy-milter`` from a separate venv (created with pip on first use)."""
    exe = venv / "bin" / "dkimpy-milter"
    if not exe.exists():
        print(f"installing dkimpy-milter into {venv} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "dkimpy-milter"],
                       check=True, timeout=600)
    return exe


def dkimpy_setup(root: Path, key: Path, venv: Path) -> Setup:
    """dkimpy-milter signing example.com (root, no syslog, no DNS)."""
    conf = root / "dkimpy-milter.conf"
    conf.write_text(
        "Mode s\n"
        f"Domain {DOMAIN}\n"
        f"Selector {SELECTOR}\n"
        f"KeyFile {key}\n"
        "Canonicalization relaxed/relaxed\n"
        "Socket {socket}\n"
        "UserID root\n"
        "UMask 000\n"
        "Syslog no\n")
    return Setup("dkimpy", [str(ensure_dkimpy_venv(venv)), str(conf)], signs=True, conf=conf)


def outpost_setup(name: str, root: Path, args: argparse.Namespace, key: Path | None,
                  spam: bool) -> Setup:
    """``outpost run`` from ``--outpost-repo`` with a config for IP-relayed mail from
    127.0.0.0/8 as example.com; ``key`` switches signing on."""
    wdir = root / f"{name}.outpost"
    wdir.mkdir()
    secret = wdir / "secret"
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(os.urandom(32))
    domain = (f"{{name: {DOMAIN}, dkim: [{{selector: {SELECTOR}, key: {key}}}]}}"
              if key is not None else f"{{name: {DOMAIN}}}")
    cfg = wdir / "outpost.yml"
    cfg.write_text(
        f"secret_file: {secret}\n"
        "store: 'memory:'\n"
        "hostname: relay.example.net\n"
        "report_abuse_to: abuse@example.net\n"
        "connection_limit: 1000\n"
        "log_level: warning\n"
        f"spam: {{enabled: {'true' if spam else 'false'}}}\n"
        "reports: {enabled: false}\n"
        f"domains:\n  - {domain}\n"
        "users:\n"
        "  - name: localhost\n"
        "    type: ip\n"
        "    ips: [127.0.0.0/8]\n"
        f"    domains: [{DOMAIN}]\n"
        # smtp-source's repetitive bodies score as spam: score, but deliver
        + ("    spam: {on_spam: accept}\n" if spam else ""))
    repo = args.outpost_repo.resolve()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(repo / "milter")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    argv = [args.outpost_python, "-m", "outpost", "run", "-c", str(cfg), "--socket", "{socket}"]
    if args.outpost_workers:
        argv += ["--workers", str(args.outpost_workers)]
    return Setup(name, argv, signs=key is not None, env=env, cwd=repo)


# --------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------

def start_setups(setups: list[Setup], sink_port: int, verify_port: int, root: Path) -> None:
    """One Postfix per setup (mail to VERIFY_RCPT goes to the capturing
    sink), its milter on the instance's socket."""
    overrides = {"transport_maps": f"inline:{{ {VERIFY_RCPT}=smtp:[127.0.0.1]:{verify_port} }}"}
    for s in setups:
        instance = PostfixInstance(root / s.name, sink_port=sink_port,
                                   milter="" if s.milter_argv is None else None,
                                   main_overrides=overrides)
        instance.build()
        if s.milter_argv is not None:
            if s.conf is not None:   # the socket is named in the milter's config file
                s.conf.write_text(s.conf.read_text().replace(
                    "{socket}", f"local:{instance.milter_socket}"))
            s.milter = MilterProcess(s.milter_argv, instance.milter_socket, env=s.env, cwd=s.cwd,
                                     log_path=root / f"{s.name}.milter.log")
            s.milter.start(timeout=60)
        instance.start()
        s.instance = instance


def stop_setups(setups: list[Setup]) -> None:
    """Stop every Postfix and milter (the milter's whole process group:
    Outpost has worker processes)."""
    for s in setups:
        if s.instance is not None:
            s.instance.stop()
        if s.milter is not None and s.milter.proc is not None:
            try:
                os.killpg(s.milter.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            s.milter.stop(graceful=False)


def dkim_signatures(data: bytes) -> list[bytes]:
    """Raw values of the DKIM-Signature fields of a message."""
    head = re.split(rb"\r?\n\r?\n", data, maxsplit=1)[0]
    return [m.group(1) for m in re.finditer(
        rb"^DKIM-Signature:((?:.*)(?:\r?\n[ \t].*)*)", head, re.M | re.I)]


def check_signing(s: Setup, args: argparse.Namespace, size: int, sink: SmtpSink,
                  txt: bytes) -> str:
    """Send a sample through ``s`` to the capturing sink; return a summary,
    raise BenchError if a signer did not sign (or a non-signer did)."""
    sink.clear()
    sample = argparse.Namespace(**{**vars(args), "recipient": VERIFY_RCPT})
    run_source(s.instance, sample, args.verify, size)
    try:
        got = sink.wait_for(args.verify, timeout=30)
    except SinkTimeout as exc:
        raise BenchError(f"{s.name}: {exc}") from None

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes:
        return txt if name.rstrip(b".") == f"{SELECTOR}._domainkey.{DOMAIN}".encode() else b""

    signed = valid = 0
    for m in got:
        sigs = dkim_signatures(m.data)
        tags = [parse_tag_value(re.sub(rb"\s+", b"", v)) for v in sigs]
        ours = [t for t in tags if t.get(b"d") == DOMAIN.encode()
                and t.get(b"s") == SELECTOR.encode()]
        if ours:
            signed += 1
            if dkim.verify(m.data, dnsfunc=dnsfunc):
                valid += 1
    summary = f"{s.name}: {signed}/{len(got)} sample messages signed, {valid} verify"
    if s.signs and (signed != len(got) or valid != len(got)):
        raise BenchError(f"{summary} (expected all)")
    if not s.signs and signed:
        raise BenchError(f"{summary} (expected none)")
    return summary


def paired(a: list[float], b: list[float]) -> float:
    """Median of same-round ratios a/b."""
    return statistics.median(x / y for x, y in zip(a, b))


def report(setups: list[Setup], sizes: list[int], args: argparse.Namespace) -> None:
    base = setups[0]
    odk = next((s for s in setups if s.name == "opendkim"), None)
    print(f"\n{args.messages} messages x {args.sessions} sessions, {args.rounds} rounds, "
          f"RSA-{args.bits}; msgs/s = median (min-max); ratios = median of same-round ratios")
    header = (f"{'config':<16}{'size':>7}{'msgs/s':>9}{'range':>12}"
              f"{'vs postfix':>12}{'vs opendkim':>13}")
    print(header)
    print("-" * len(header))
    for size in sizes:
        for s in setups:
            r = s.rates[size]
            vs_odk = f"{paired(r, odk.rates[size]):.2f}" if odk else "-"
            print(f"{s.name:<16}{size:>7}{statistics.median(r):>9.0f}"
                  f"{f'{min(r):.0f}-{max(r):.0f}':>12}"
                  f"{paired(r, base.rates[size]):>12.2f}{vs_odk:>13}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000, help="messages per run")
    parser.add_argument("--sessions", type=int, default=10, help="parallel SMTP sessions")
    parser.add_argument("--sizes", default="2048", help="payload sizes in bytes, e.g. 2048,20480")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--warmup", type=int, default=100, help="warm-up messages per config")
    parser.add_argument("--verify", type=int, default=20,
                        help="sample messages per config checked for a valid signature")
    parser.add_argument("--bits", type=int, default=2048, help="RSA key size")
    parser.add_argument("--outpost-repo", type=Path, default=REPO,
                        help="Outpost checkout to run (its milter/ goes on PYTHONPATH)")
    parser.add_argument("--outpost-python", default=sys.executable,
                        help="interpreter for Outpost (needs pymilter, dkimpy, ...)")
    parser.add_argument("--outpost-workers", type=int, default=0,
                        help="outpost run --workers (default: Outpost's own default)")
    parser.add_argument("--dkimpy-venv", type=Path, default=DEFAULT_DKIMPY_VENV,
                        help="venv holding dkimpy-milter (created with pip if missing)")
    parser.add_argument("--spam", action="store_true",
                        help="also Outpost signing with the spam engine on")
    parser.add_argument("--skip", action="append", default=[], metavar="NAME",
                        help="leave out a configuration (repeatable)")
    parser.add_argument("--sender", default=f"bench@{DOMAIN}")
    parser.add_argument("--recipient", default="rcpt@example.net")
    parser.add_argument("--reuse", action="store_true",
                        help="send several messages per session (smtp-source -d)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    names = ["postfix", "opendkim", "dkimpy", "outpost-nosign", "outpost-sign"]
    names += ["outpost-spam"] if args.spam else []
    unknown = set(args.skip) - set(names)
    if unknown or "postfix" in args.skip:
        parser.error(f"--skip: unknown or required configuration {sorted(unknown) or 'postfix'}")
    with bench_site(args.keep) as (root, sink_port):
        key, txt = make_key(root, args.bits)
        makers = {
            "postfix": lambda: Setup("postfix", None, signs=False),
            "opendkim": lambda: opendkim_setup(root, key),
            "dkimpy": lambda: dkimpy_setup(root, key, args.dkimpy_venv),
            "outpost-nosign": lambda: outpost_setup("outpost-nosign", root, args, None, False),
            "outpost-sign": lambda: outpost_setup("outpost-sign", root, args, key, False),
            "outpost-spam": lambda: outpost_setup("outpost-spam", root, args, key, True),
        }
        setups: list[Setup] = []
        capture = SmtpSink()
        try:
            setups = [makers[name]() for name in names if name not in args.skip]
            capture.start()
            start_setups(setups, sink_port, capture.port, root)
            for s in setups:
                print(check_signing(s, args, sizes[0], capture, txt), flush=True)
                run_source(s.instance, args, args.warmup, sizes[0])
            run_rounds(setups, args, sizes)
            report(setups, sizes, args)
        finally:
            stop_setups(setups)
            capture.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
