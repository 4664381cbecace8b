"""The ``outpost`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Optional, Sequence

from . import __version__
from .config import ConfigError, load_config
from .ops import OpsError
from .store.base import StoreError

DEFAULT_CONFIG = "/etc/outpost/outpost.yaml"


LOG_FORMAT = "%(asctime)s outpost[%(process)d] %(levelname)s %(name)s: %(message)s"


def _setup_logging(level: str = "info", stream=None) -> None:
    """The daemon's logging: ``LOG_FORMAT`` to ``stream`` (standard error)."""
    # libmilter calls us from threads Python did not create: a log record's
    # threadName would make threading register a _DummyThread for each new
    # connection thread (slow, and never freed).  We log no thread names.
    logging.logThreads = False
    logging.logMultiprocessing = False
    # No caller lookup (file, line, function) for each record: the format
    # does not show it (the logging HOWTO's "Optimization" section).
    logging._srcfile = None
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(LogFormatter())
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler],
                        force=True)


class LogFormatter(logging.Formatter):
    """:data:`LOG_FORMAT`, written for the line each message logs: the date
    and time are formatted once a second, not for every record, and a record
    without a traceback is one f-string, not the generic %-style machinery
    (about 4 → 1.5 µs).  The output is the stock formatter's."""

    def __init__(self) -> None:
        super().__init__(LOG_FORMAT)
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: Optional[str] = None) -> str:
        # Called under the handler's lock: one thread at a time.
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(record.created))
            self._second = second
        return f"{self._stamp},{int(record.msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            return super().format(record)
        return (f"{self.formatTime(record)} outpost[{record.process}] {record.levelname} "
                f"{record.name}: {record.getMessage()}")


def cmd_run(args: argparse.Namespace) -> int:
    from .adapter.server import ServeError, serve
    from .runtime import StartupError
    config = load_config(args.config)
    _setup_logging(config.log_level)
    try:
        return serve(args.config, args.socket, args.workers, args.socket_group, args.user,
                     args.group)
    except (StartupError, ServeError) as exc:
        logging.getLogger("outpost").error("cannot start: %s", exc)
        return 1


def cmd_check_config(args: argparse.Namespace) -> int:
    from .core.idtoken import read_secret
    config = load_config(args.config)
    try:
        read_secret(config.secret_file)
    except FileNotFoundError:
        print(f"outpost: warning: secret_file {config.secret_file} does not exist yet (create "
              f"one with: outpost secret {config.secret_file})", file=sys.stderr)
    except (OSError, ValueError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) else str(exc)
        print(f"outpost: configuration error: {args.config}: secret_file: {detail}",
              file=sys.stderr)
        return 2
    if config.dkim.settings is not None:
        from .effects.dkim import DkimKeyError, load_keys
        try:
            load_keys(config.dkim.settings)          # unsafe, missing or bad key files
        except DkimKeyError as exc:
            print(f"outpost: configuration error: {args.config}: dkim: {exc}", file=sys.stderr)
            return 2
    nets = sum(len(u.ips) for u in config.users)
    print(f"{args.config}: OK ({len(config.users)} users, {nets} networks, "
          f"{len(config.domains)} domains)")
    return 0


def cmd_whois(args: argparse.Namespace) -> int:
    from .core.idtoken import TokenCodec, TokenError, read_secret
    config = load_config(args.config)
    try:
        codec = TokenCodec(read_secret(config.secret_file))
    except (OSError, ValueError) as exc:
        print(f"outpost: {exc}", file=sys.stderr)
        return 2
    try:
        origin = codec.open(args.token)
    except TokenError as exc:
        print(f"outpost: {exc}", file=sys.stderr)
        return 1
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(origin.time))
    print(f"user:      {origin.user}\nidentity:  {origin.identity}\nclient ip: {origin.client_ip or '-'}\n"
          f"queue id:  {origin.queue_id or '-'}\ntime:      {when}")
    return 0


def cmd_secret(args: argparse.Namespace) -> int:
    from .core.idtoken import new_secret
    if os.path.exists(args.path) and not args.force:
        print(f"outpost: {args.path} exists (use --force to replace it; old X-Outpost-IDs "
              f"become unreadable)", file=sys.stderr)
        return 1
    os.makedirs(os.path.dirname(os.path.abspath(args.path)), exist_ok=True)
    tmp = f"{args.path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(new_secret())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, args.path)
    print(f"wrote a new secret to {args.path}")
    return 0


def _state(args: argparse.Namespace, shared: bool = True):
    """(config, store) for the state commands: the configured store itself,
    never a fallback to this process' memory.  A store that fails raises
    StoreError (exit 3); ``memory:`` holds no shared state, so a command
    that reads or changes it is refused (``shared=False``: ``scan``, which
    only reads and may run without a shared store)."""
    from .runtime import open_shared_store
    config = load_config(args.config)
    if shared and config.store.startswith("memory:"):
        raise StoreError(f"store {config.store} is this process' memory, not shared state: "
                         f"'outpost {args.command}' would neither see nor change what the "
                         f"relays use (configure a sqlite:// or redis:// store)")
    return config, open_shared_store(config)


def cmd_locks(args: argparse.Namespace) -> int:
    from .ops import list_locks
    _, store = _state(args)
    print(list_locks(store))
    return 0


def cmd_lock(args: argparse.Namespace) -> int:
    from .ops import lock
    config, store = _state(args)
    print(lock(config, store, args.identity, args.duration, args.reason))
    return 0


def cmd_unlock(args: argparse.Namespace) -> int:
    from .ops import unlock
    config, store = _state(args)
    text, code = unlock(config, store, args.identity)
    print(text)
    return code


def cmd_reset(args: argparse.Namespace) -> int:
    from .ops import reset
    config, store = _state(args)
    print(reset(config, store, args.target))
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    from .core.idtoken import TokenCodec
    from .core.policy import Policy
    from .ops import usage
    config, store = _state(args)
    policy = Policy(config, store, TokenCodec(b"\0" * 32))   # no token is made here
    print(usage(config, store, policy, args.target))
    return 0


def cmd_quarantine(args: argparse.Namespace) -> int:
    from .effects.quarantine import PostfixQuarantine, QuarantineError
    q = PostfixQuarantine(args.postfix_config)
    try:
        if args.action == "list":
            held = q.list()
            if not held:
                print("the hold queue is empty")
            for h in held:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h.arrival))
                print(f"{h.queue_id}  {when}  {h.size:>8} bytes  <{h.sender}> -> "
                      f"{', '.join(h.recipients)}")
                for name, value in h.outpost:
                    if name.lower() in ("x-outpost-user", "x-outpost-class", "x-outpost-score",
                                        "x-outpost-evidence"):
                        print(f"    {name}: {value}")
            return 0
        if not args.queue_id:
            print("outpost: give a queue id", file=sys.stderr)
            return 2
        if args.action == "release":
            q.release(args.queue_id)
            print(f"released {args.queue_id}")
        else:
            q.delete(args.queue_id)
            print(f"deleted {args.queue_id}")
        return 0
    except QuarantineError as exc:
        print(f"outpost: {exc}", file=sys.stderr)
        return 1


def cmd_scan(args: argparse.Namespace) -> int:
    from .core.idtoken import TokenCodec, read_secret
    from .core.policy import Policy
    from .scan import ReadOnlyStore, scan_message, to_json
    from .spam.build import build_engine
    config, real = _state(args, shared=False)
    store = ReadOnlyStore(real)
    try:
        codec = TokenCodec(read_secret(config.secret_file))
    except (OSError, ValueError):
        codec = TokenCodec(b"outpost scan without a secret file")   # tokens shown are not valid
    policy = Policy(config, store, codec, engine=build_engine(config, store))
    with open(args.file, "rb") as fh:
        raw = fh.read()
    report = scan_message(policy, raw, login=args.login, client_ip=args.client_ip,
                          sender=args.sender, recipients=args.rcpt or ())
    print(to_json(report) if args.json else report.format())
    return 0 if not report.decision.blocks else 1


def cmd_train(args: argparse.Namespace) -> int:
    from .spam.bayes import train_from_dirs
    from .spam.build import MODEL_BLOB
    config, store = _state(args)
    model = train_from_dirs(args.spam, args.ham)
    data = model.to_bytes()
    store.put_blob(MODEL_BLOB, data)
    print(f"trained on {model.nspam} spam and {model.nham} ham messages; "
          f"{len(data)} bytes stored in {config.store} (reload Outpost to use it)")
    return 0


def cmd_reports(args: argparse.Namespace) -> int:
    from .effects.reports import ReportError, Spool, list_items, overflow_counts, purge, retry
    config = load_config(args.config)
    if config.reports is None:
        print("outpost: reports are switched off (reports: {enabled: false})", file=sys.stderr)
        return 1
    spool = Spool.from_settings(config.reports)
    try:
        if args.action == "list":
            items = list_items(spool)
            if not items:
                print(f"no reports in {spool.path}")
            for it in items:
                nxt = time.strftime("%H:%M:%S", time.localtime(it.next_attempt)) if it.next_attempt else "-"
                print(f"{it.id}  {it.state:8} {it.kind:6} {it.identity or '-':36} attempts={it.attempts} "
                      f"next={nxt} incidents={it.incidents}" + (f"  error: {it.last_error}" if it.last_error else ""))
            for user, count in overflow_counts(spool):
                print(f"counted (spool full, not spooled): user {user} incidents={count}")
        elif args.action == "retry":
            print(f"{retry(spool, args.id)} report(s) due now")
        else:
            print(f"{purge(spool, args.id, args.state)} report(s) deleted")
    except (ReportError, ValueError) as exc:
        print(f"outpost: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_dkim_keygen(args: argparse.Namespace) -> int:
    from .effects.dkim import keygen, zone_line
    try:
        path, txt = keygen(args.domain, args.selector, args.type, args.bits, args.dir)
    except (OSError, ValueError) as exc:
        print(f"outpost: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {path} (mode 0600)\n\npublish this DNS record:\n")
    print(zone_line(args.domain, args.selector, txt))
    print(f"\nthen add to the configuration under domains:\n"
          f"  - name: {args.domain}\n    dkim: {{selector: {args.selector}, key: {path}"
          + (", algorithm: ed25519" if args.type == "ed25519" else "") + "}")
    return 0


def cmd_domains_check(args: argparse.Namespace) -> int:
    from .effects.dkim import load_keys
    from .effects.domaincheck import check_domain
    from .effects.resolver import ResolverSettings, make_resolver
    from .effects.spf import SpfSettings
    config = load_config(args.config)
    resolver = make_resolver(config.dns or ResolverSettings())
    keys = load_keys(config.dkim.settings) if config.dkim.settings is not None else {}
    report = check_domain(args.domain, resolver, config.spf or SpfSettings(),
                          keys.get(args.domain.rstrip(".").lower(), ()))
    print(report.format())
    return 0 if report.ok else 1


def _duration(text: str) -> float:
    from .config.source import parse_duration
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="outpost", description="Outbound mail filter (milter)")
    p.add_argument("--version", action="version", version=f"outpost {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, fn, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(func=fn)
        return sp

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("-c", "--config", default=os.environ.get("OUTPOST_CONFIG", DEFAULT_CONFIG),
                        help=f"configuration file (default {DEFAULT_CONFIG})")
        return sp

    sp = with_config(cmd("run", cmd_run, "serve the milter socket"))
    sp.add_argument("--socket", help="override 'listen' (unix:/path, inet:PORT@HOST, fd:N)")
    sp.add_argument("--workers", type=int, help="worker processes (default: config, else number of cores)")
    sp.add_argument("--socket-group", help="group owning a unix socket (default: postfix if it exists)")
    sp.add_argument("--user", help="run as this user after reading the keys and binding the socket "
                                   "as root (hosts without systemd; the unit uses User=)")
    sp.add_argument("--group", help="with --user: run with this group (default: the user's)")

    with_config(cmd("check-config", cmd_check_config, "validate the configuration"))

    sp = with_config(cmd("whois", cmd_whois, "reveal who sent a message from its X-Outpost-ID"))
    sp.add_argument("token")

    with_config(cmd("locks", cmd_locks, "list locked identities and users (user:NAME) with reason and expiry"))
    sp = with_config(cmd("lock", cmd_lock, "lock an identity (USER/IDENTITY) or a whole user (USER)"))
    sp.add_argument("identity", metavar="USER/IDENTITY|USER")
    sp.add_argument("--for", dest="duration", type=_duration, default=None,
                    help="duration such as 2h (default: until unlocked)")
    sp.add_argument("--reason", default="locked by an operator")
    sp = with_config(cmd("unlock", cmd_unlock, "unlock an identity or a whole user and clear its hit history"))
    sp.add_argument("identity", metavar="USER/IDENTITY|USER")
    sp = with_config(cmd("usage", cmd_usage, "show each limit window as used/limit"))
    sp.add_argument("target", nargs="?", metavar="USER|USER/IDENTITY")
    sp = with_config(cmd("reset", cmd_reset, "forget the counters of an identity or a user"))
    sp.add_argument("target", metavar="USER|USER/IDENTITY")

    sp = with_config(cmd("scan", cmd_scan, "run the whole decision on a message file, without an MTA"))
    sp.add_argument("file", metavar="FILE.eml")
    sp.add_argument("--login", help="SMTP AUTH login")
    sp.add_argument("--client-ip", help="client address")
    sp.add_argument("--from", dest="sender", help="envelope sender (default: the From address)")
    sp.add_argument("--rcpt", action="append", help="recipient (repeatable; default: the To address)")
    sp.add_argument("--json", action="store_true", help="machine-readable output")

    sp = with_config(cmd("train", cmd_train, "train the Bayes classifier on your own mail"))
    sp.add_argument("--spam", action="append", required=True, metavar="DIR",
                    help="directory of spam messages, one per file (repeatable)")
    sp.add_argument("--ham", action="append", required=True, metavar="DIR",
                    help="directory of legitimate messages (repeatable)")

    sp = with_config(cmd("reports", cmd_reports, "list, retry or purge spooled abuse reports"))
    sp.add_argument("action", choices=["list", "retry", "purge"])
    sp.add_argument("id", nargs="?", help="one report (default: all; purge: all failed ones)")
    sp.add_argument("--state", help="purge: only items in this state (default failed)")

    dk = sub.add_parser("dkim", help="DKIM keys").add_subparsers(dest="dkim_command", required=True)
    sp = dk.add_parser("keygen", help="create a DKIM key (mode 0600) and print the DNS record")
    sp.set_defaults(func=cmd_dkim_keygen)
    sp.add_argument("domain")
    sp.add_argument("--selector", required=True)
    sp.add_argument("--type", choices=["rsa", "ed25519"], default="rsa")
    sp.add_argument("--bits", type=int, default=2048)
    sp.add_argument("--dir", default="/etc/outpost/dkim")
    dm = sub.add_parser("domains", help="customer domains").add_subparsers(dest="domains_command",
                                                                        required=True)
    sp = with_config(dm.add_parser("check", help="check a domain's SPF, DKIM and DMARC records "
                                                 "(exit 0: all good)"))
    sp.set_defaults(func=cmd_domains_check)
    sp.add_argument("domain")

    sp = cmd("quarantine", cmd_quarantine, "list, release or delete messages Outpost quarantined "
                                           "(Postfix hold queue)")
    sp.add_argument("action", choices=["list", "release", "delete"])
    sp.add_argument("queue_id", nargs="?")
    sp.add_argument("--postfix-config", default="/etc/postfix", metavar="DIR",
                    help="the Postfix instance's configuration directory (default /etc/postfix)")

    sp = cmd("secret", cmd_secret, "create the secret file for X-Outpost-ID tokens")
    sp.add_argument("path")
    sp.add_argument("--force", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"outpost: configuration error: {exc}", file=sys.stderr)
        return 2
    except OpsError as exc:
        print(f"outpost: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"outpost: store error, the command did not complete: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130
