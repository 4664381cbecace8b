"""The ``outpost`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import TYPE_CHECKING, Optional, Sequence

from . import __version__
from .config import ConfigError, load_config
from .state_commands import TargetError
from .store.base import StoreError

if TYPE_CHECKING:
    from .config.model import LogLevel, LogSettings

DEFAULT_CONFIG = "/etc/outpost/outpost.yaml"


def _setup_logging(settings: "LogSettings | LogLevel" = "info", stream=None) -> None:
    """The daemon's logging (:mod:`outpost.logs`): ``settings`` is the
    ``log:`` block, or just a level for standard error."""
    from .config.model import LogSettings
    from .logs import setup_logging
    if isinstance(settings, str):
        settings = LogSettings(level=settings)
    setup_logging(settings, stream)


def cmd_run(args: argparse.Namespace) -> int:
    from .adapter.server import ServeError, serve
    from .runtime import StartupError
    config = load_config(args.config)
    _setup_logging(config.log)
    if args.dry_run:
        return _dry_run(config, args.config)
    try:
        return serve(args.config, args.socket, args.workers, args.socket_group, args.user,
                     args.group)
    except (StartupError, ServeError) as exc:
        logging.getLogger("outpost").error("cannot start: %s", exc)
        return 1


def _dry_run(config, path: str) -> int:
    """``run --dry-run``: what ``run`` does before it serves (read the
    secret and DKIM keys, open the store, build the policy, the spam engine,
    the report spool), as the current user, then close it all; no socket is
    bound and no worker started.  Exit 0, or 1 with the ``cannot start:``
    line ``run`` would log."""
    from .runtime import Runtime, StartupError, load_secrets
    try:
        Runtime.build(config, load_secrets(config)).close()
    except StartupError as exc:
        logging.getLogger("outpost").error("cannot start: %s", exc)
        return 1
    print(f"{path}: dry run OK (store {_shown_store(config.store)}, {len(config.users)} users, "
          f"{len(config.domains)} domains)")
    return 0


def _shown_store(url: str) -> str:
    if url.startswith(("redis://", "rediss://")):
        from .store.redis import redact_url
        return redact_url(url)
    return url


def _print_json(obj) -> None:
    """One JSON document on standard output (the schemas: docs/operations.rst,
    "Machine-readable output (--json)")."""
    import json
    print(json.dumps(obj, indent=2, sort_keys=False, default=str))


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate; with ``--strict`` a missing secret is an error, the store is
    opened, and every error is listed (exit 2: configuration, 3: only the
    store failed)."""
    from .core.idtoken import read_secret
    errors: list[str] = []
    warnings: list[str] = []
    store_errors: list[str] = []
    config = None
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        if not (args.strict or args.json):
            raise
        errors.extend(exc.errors)
    if config is not None:
        try:
            read_secret(config.secret_file)
        except FileNotFoundError:
            text = (f"secret_file {config.secret_file} does not exist yet (create one with: "
                    f"outpost secret {config.secret_file})")
            (errors if args.strict else warnings).append(
                f"{args.config}: {text}" if args.strict else text)
        except (OSError, ValueError) as exc:
            detail = exc.strerror if isinstance(exc, OSError) else str(exc)
            errors.append(f"{args.config}: secret_file: {detail}")
        if config.dkim.settings is not None:
            from .effects.dkim import DkimKeyError, load_key
            for key in config.dkim.settings.keys:       # each key: every bad one is listed
                try:
                    load_key(key, config.dkim.settings.min_rsa_bits)
                except DkimKeyError as exc:
                    errors.append(f"{args.config}: dkim: {exc}")
        if config.reports is not None:
            problem = config.reports.listener_problem()
            if problem is not None:
                errors.append(f"{args.config}: {problem}")
            warning = config.reports.listener_warning()
            if warning is not None:
                warnings.append(f"{args.config}: {warning}")
        from .store.url import parse_store_url
        db = parse_store_url(config.store).path          # the sqlite file, else None
        if args.strict and db is not None and not os.path.exists(db):
            # Not created here: check-config may run as another user (root, in
            # ExecStartPre) than the service, which must own the database.
            where = os.path.dirname(db)
            while where and not os.path.isdir(where):
                where = os.path.dirname(where)
            if not os.access(where or "/", os.W_OK):
                store_errors.append(f"store {config.store}: {where} is not writable")
            else:
                warnings.append(f"store {config.store}: the database does not exist yet "
                                f"('outpost run' creates it)")
        elif args.strict:
            from .runtime import open_shared_store
            try:
                store = open_shared_store(config)
                try:
                    store.stat_read("m", 1)           # one read: the store answers
                finally:
                    store.close()
            except (StoreError, ValueError, OSError) as exc:
                from .store.redis import redact_url
                store_errors.append(f"store {redact_url(config.store)}: {exc}")
    summary = None
    if config is not None:
        summary = {"users": len(config.users), "networks": sum(len(u.ips) for u in config.users),
                   "domains": len(config.domains)}
    if args.json:
        _print_json({"file": args.config, "ok": not (errors or store_errors), "strict": args.strict,
                     **(summary or {"users": None, "networks": None, "domains": None}),
                     "included": list(config.included) if config is not None else [],
                     "errors": errors, "store_errors": store_errors, "warnings": warnings})
    else:
        for w in warnings:
            print(f"outpost: warning: {w}", file=sys.stderr)
        for e in errors:
            print(f"outpost: configuration error: {e}", file=sys.stderr)
        for e in store_errors:
            print(f"outpost: store error: {e}", file=sys.stderr)
        if not (errors or store_errors) and config is not None and summary is not None:
            files = f", {len(config.included)} included files" if config.included else ""
            print(f"{args.config}: OK ({summary['users']} users, {summary['networks']} networks, "
                  f"{summary['domains']} domains{files})")
    return 2 if errors else 3 if store_errors else 0


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
    if args.json:
        _print_json({"user": origin.user, "identity": origin.identity,
                     "client_ip": origin.client_ip or None, "queue_id": origin.queue_id or None,
                     "time": origin.time})
        return 0
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
    from .state_commands import list_locks, locks_data
    _, store = _state(args)
    if args.json:
        _print_json({"locks": locks_data(store)})
    else:
        print(list_locks(store))
    return 0


def cmd_lock(args: argparse.Namespace) -> int:
    from .state_commands import lock
    config, store = _state(args)
    print(lock(config, store, args.identity, args.duration, args.reason))
    return 0


def cmd_unlock(args: argparse.Namespace) -> int:
    from .state_commands import unlock
    config, store = _state(args)
    text, code = unlock(config, store, args.identity)
    print(text)
    return code


def cmd_reset(args: argparse.Namespace) -> int:
    from .state_commands import reset
    config, store = _state(args)
    print(reset(config, store, args.target))
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    from .state_commands import usage, usage_data
    config, store = _state(args)
    if args.json:
        _print_json({"usage": usage_data(config, store, args.target)})
    else:
        print(usage(config, store, args.target))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from .stats import format_summary, summary
    _, store = _state(args)
    out = {"last_hour": summary(store.stat_read("m", 60), args.top),
           "last_day": summary(store.stat_read("h", 24), args.top)}
    if args.json:
        _print_json(out)
    else:
        print(format_summary("last hour", out["last_hour"]))
        print(format_summary("last day", out["last_day"]))
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    from .state_commands import top, top_data
    config, store = _state(args)
    rows = top_data(config, store, args.limit)
    if args.json:
        _print_json({"top": rows})
    else:
        print(top(rows))
    return 0


def _decision_recorder(args: argparse.Namespace):
    """The training folder release and delete keep the decision in
    (``quarantine.training_dir``), from ``-c`` (or $OUTPOST_CONFIG, else the
    default file when it exists); None, with a note, without a configuration."""
    from .training import DecisionSpool
    path = args.config or os.environ.get("OUTPOST_CONFIG")
    if path is None:
        if not os.path.exists(DEFAULT_CONFIG):
            print(f"outpost: note: no configuration ({DEFAULT_CONFIG}), so this decision is not "
                  f"kept for 'outpost train --from-quarantine'", file=sys.stderr)
            return None
        path = DEFAULT_CONFIG
    return DecisionSpool(load_config(path).quarantine)


def cmd_quarantine(args: argparse.Namespace) -> int:
    from .effects.quarantine import PostfixQuarantine, QuarantineError
    recorder = _decision_recorder(args) if args.action in ("release", "delete") else None
    q = PostfixQuarantine(args.postfix_config, recorder)
    try:
        if args.action == "list":
            held = q.list()
            if args.json:
                _print_json({"held": [{"queue_id": h.queue_id, "arrival": h.arrival, "size": h.size,
                                       "sender": h.sender, "recipients": list(h.recipients),
                                       "outpost_headers": [[n, v] for n, v in h.outpost]}
                                      for h in held]})
                return 0
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
            print(f"released {args.queue_id}"
                  + (" (kept as ham for outpost train --from-quarantine)" if recorder else ""))
        else:
            q.delete(args.queue_id)
            print(f"deleted {args.queue_id}"
                  + (" (kept as spam for outpost train --from-quarantine)" if recorder else ""))
        return 0
    except QuarantineError as exc:
        print(f"outpost: {exc}", file=sys.stderr)
        return 1


def cmd_scan(args: argparse.Namespace) -> int:
    from .core.idtoken import TokenCodec, read_secret
    from .core.policy import Policy
    from .offline import decide_offline, to_json
    from .spam.from_config import build_engine
    from .store.readonly import ReadOnlyStore
    config, real = _state(args, shared=False)
    store = ReadOnlyStore(real)
    try:
        codec = TokenCodec(read_secret(config.secret_file))
    except (OSError, ValueError):
        codec = TokenCodec(b"outpost scan without a secret file")   # tokens shown are not valid
    policy = Policy(config, store, codec, engine=build_engine(config, store))
    with open(args.file, "rb") as fh:
        raw = fh.read()
    report = decide_offline(policy, raw, login=args.login, client_ip=args.client_ip,
                          sender=args.sender, recipients=args.rcpt or ())
    print(to_json(report) if args.json else report.format())
    return 0 if not report.decision.blocks else 1


def cmd_train(args: argparse.Namespace) -> int:
    from .spam.bayes import ModelError, train_from_dirs
    from .spam.from_config import MODEL_BLOB
    if args.from_quarantine == bool(args.spam or args.ham) or (
            not args.from_quarantine and not (args.spam and args.ham)):
        print("outpost: train needs --spam DIR and --ham DIR, or --from-quarantine alone",
              file=sys.stderr)
        return 2
    config, store = _state(args)
    if args.from_quarantine:
        from .training import DecisionSpool, TrainingError
        try:
            got = DecisionSpool(config.quarantine).train(store)
        except (TrainingError, OSError, ModelError) as exc:
            print(f"outpost: {exc}", file=sys.stderr)
            return 1
        finally:
            store.close()
        print(f"learned {got.ham} released message(s) as ham and {got.spam} deleted message(s) "
              f"as spam into the model in {store.url} (reload Outpost to use it)")
        return 0
    model = train_from_dirs(args.spam, args.ham)
    data = model.to_bytes()
    store.put_blob(MODEL_BLOB, data)
    print(f"trained on {model.nspam} spam and {model.nham} ham messages; "
          f"{len(data)} bytes stored in {store.url} (reload Outpost to use it)")
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
            if args.json:
                _print_json({"reports": [{"id": it.id, "state": it.state, "kind": it.kind,
                                          "identity": it.identity or None, "attempts": it.attempts,
                                          "next_attempt": it.next_attempt, "created": it.created,
                                          "incidents": it.incidents, "last_error": it.last_error or None,
                                          "message_id": it.message_id or None} for it in items],
                             "overflow": [{"user": user, "incidents": count}
                                          for user, count in overflow_counts(spool)]})
                return 0
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


def cmd_feedback(args: argparse.Namespace) -> int:
    """``outpost feedback``: one complaint from standard input (a pipe from
    the MTA), every message of ``--maildir DIR``, or ``list``.  Anything
    that may pass (configuration, secret, store, spool) exits 75 so the MTA
    keeps the complaint and retries; an unreadable complaint is kept (0)."""
    from .core.idtoken import TokenCodec, read_secret
    from .feedback_command import (
        EX_TEMPFAIL,
        Spool,
        SpoolError,
        access_problems,
        handle,
        list_data,
        list_text,
        maildir_files,
        read_bounded,
        running_as,
    )
    from .runtime import open_shared_store
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"outpost: configuration error: {exc}", file=sys.stderr)
        return 2 if args.action == "list" else EX_TEMPFAIL
    spool = Spool(config.feedback)
    if args.action == "list":
        data = list_data(spool)
        if args.json:
            _print_json(data)
        else:
            print(list_text(data))
        return 0
    _setup_logging(config.log)
    problems = access_problems(config)
    if problems:
        print(f"outpost: feedback runs as {running_as()}, which {'; '.join(problems)}: run it as "
              f"the user Outpost runs as (a pipe transport with user=outpost, see "
              f"docs/operations.rst, \"Complaints (feedback loops)\"); complaint not taken "
              f"(the MTA retries)", file=sys.stderr)
        return EX_TEMPFAIL
    try:
        codec = TokenCodec(read_secret(config.secret_file))
    except (OSError, ValueError) as exc:
        print(f"outpost: cannot read the secret: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    try:
        if config.store.startswith("memory:"):
            raise StoreError(f"store {config.store} is not shared state: complaints would be "
                             f"counted where no relay sees them")
        store = open_shared_store(config)
    except (StoreError, ValueError, OSError) as exc:
        print(f"outpost: store error, complaint not taken (the MTA retries): {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    reporter = None
    if config.reports is not None:            # the abuse report of a lock complaints set
        from .effects.reports import Spool as ReportSpool
        from .effects.reports import SpoolError as ReportSpoolError
        try:
            reporter = ReportSpool.from_settings(config.reports).put
        except (ReportSpoolError, OSError) as exc:
            store.close()
            print(f"outpost: reports.spool_dir: {exc}; complaint not taken (the MTA retries)",
                  file=sys.stderr)
            return EX_TEMPFAIL
    code = 0
    try:
        if args.maildir:
            for path in maildir_files(args.maildir):
                with open(path, "rb") as fh:
                    raw, truncated = read_bounded(fh, config.feedback.max_size)
                out = handle(config, store, codec, spool, raw, truncated, reporter)
                print(f"{path.name}: {out.text}")
                code = max(code, out.code)
        else:
            raw, truncated = read_bounded(sys.stdin.buffer, config.feedback.max_size)
            out = handle(config, store, codec, spool, raw, truncated, reporter)
            print(out.text)
            code = out.code
    except (StoreError, SpoolError) as exc:
        print(f"outpost: {exc}; complaint not taken (the MTA retries)", file=sys.stderr)
        return EX_TEMPFAIL
    except OSError as exc:            # --maildir: the directory or a file cannot be read
        print(f"outpost: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    except Exception as exc:  # noqa: BLE001 - a fault of ours: the MTA keeps the complaint, never bounces it
        print(f"outpost: internal error, complaint not taken (the MTA retries): "
              f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    finally:
        store.close()
    return code


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
    if args.json:
        import dataclasses
        _print_json(dataclasses.asdict(report))
    else:
        print(report.format())
    return 0 if report.ok else 1


def cmd_panel(args: argparse.Namespace) -> int:
    """``outpost panel``: serve the web panel; ``outpost panel passwd NAME``:
    print a password hash for ``panel.users``."""
    if args.action == "passwd":
        return _panel_passwd(args)
    if args.name:
        print("outpost: 'outpost panel' takes no NAME (did you mean 'outpost panel passwd NAME'?)",
              file=sys.stderr)
        return 2
    from .panel.serve import PanelStartError, serve
    config = load_config(args.config)
    _setup_logging(config.log)
    try:
        return serve(config, args.listen)
    except (PanelStartError, ValueError, OSError) as exc:
        logging.getLogger("outpost").error("panel cannot start: %s", exc)
        return 1


def _panel_passwd(args: argparse.Namespace) -> int:
    import getpass

    from .panel.auth import hash_password
    from .panel.settings import PanelUser
    if not args.name:
        print("outpost: give the account name: outpost panel passwd NAME", file=sys.stderr)
        return 2
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.name}: ")
        if password != getpass.getpass("again: "):
            print("outpost: the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 8:
        print("outpost: a panel password needs at least 8 characters", file=sys.stderr)
        return 1
    try:
        user = PanelUser(args.name, hash_password(password), args.role)
    except ValueError as exc:
        print(f"outpost: {exc}", file=sys.stderr)
        return 2
    print(f"# add under panel: users: in the configuration\n"
          f"- {{name: {user.name}, role: {user.role}, password_hash: \"{user.password_hash}\"}}")
    return 0


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
    sp.add_argument("--dry-run", action="store_true",
                    help="load the configuration, read the secret and keys, open the store and "
                         "build everything as run does, then exit (0: it would start)")

    def with_json(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--json", action="store_true",
                        help="machine-readable output (one JSON document, see docs/operations.rst)")
        return sp

    sp = with_json(with_config(cmd("check-config", cmd_check_config, "validate the configuration")))
    sp.add_argument("--strict", action="store_true",
                    help="also require the secret, open the store, and list every error")

    sp = with_json(with_config(cmd("whois", cmd_whois, "reveal who sent a message from its X-Outpost-ID")))
    sp.add_argument("token")

    with_json(with_config(cmd("locks", cmd_locks,
                              "list locked identities and users (user:NAME) with reason and expiry")))
    sp = with_config(cmd("lock", cmd_lock, "lock an identity (USER/IDENTITY) or a whole user (USER)"))
    sp.add_argument("identity", metavar="USER/IDENTITY|USER")
    sp.add_argument("--for", dest="duration", type=_duration, default=None,
                    help="duration such as 2h (default: until unlocked)")
    sp.add_argument("--reason", default="locked by an operator")
    sp = with_config(cmd("unlock", cmd_unlock, "unlock an identity or a whole user and clear its hit history"))
    sp.add_argument("identity", metavar="USER/IDENTITY|USER")
    sp = with_json(with_config(cmd("usage", cmd_usage, "show each limit window as used/limit")))
    sp.add_argument("target", nargs="?", metavar="USER|USER/IDENTITY")
    sp = with_json(with_config(cmd("stats", cmd_stats, "messages, refusals and top users of the "
                                                       "last hour and day (all relays)")))
    sp.add_argument("--top", type=int, default=10, metavar="N", help="users in each top list (default 10)")
    sp = with_json(with_config(cmd("top", cmd_top, "identities and users nearest their limits")))
    sp.add_argument("-n", "--limit", type=int, default=20, metavar="N", help="rows (default 20)")
    sp = with_config(cmd("reset", cmd_reset, "forget the counters of an identity or a user"))
    sp.add_argument("target", metavar="USER|USER/IDENTITY")

    sp = with_config(cmd("scan", cmd_scan, "run the whole decision on a message file, without an MTA"))
    sp.add_argument("file", metavar="FILE.eml")
    sp.add_argument("--login", help="SMTP AUTH login")
    sp.add_argument("--client-ip", help="client address")
    sp.add_argument("--from", dest="sender", help="envelope sender (default: the From address)")
    sp.add_argument("--rcpt", action="append", help="recipient (repeatable; default: the To address)")
    with_json(sp)

    sp = with_config(cmd("train", cmd_train, "train the Bayes classifier on your own mail"))
    sp.add_argument("--spam", action="append", metavar="DIR",
                    help="directory of spam messages, one per file (repeatable)")
    sp.add_argument("--ham", action="append", metavar="DIR",
                    help="directory of legitimate messages (repeatable)")
    sp.add_argument("--from-quarantine", action="store_true",
                    help="instead: add the messages released from the quarantine (ham) and "
                         "deleted from it (spam) since the last run to the stored model")

    sp = with_json(with_config(cmd("reports", cmd_reports, "list, retry or purge spooled abuse reports")))
    sp.add_argument("action", choices=["list", "retry", "purge"])
    sp.add_argument("id", nargs="?", help="one report (default: all; purge: all failed ones)")
    sp.add_argument("--state", help="purge: only items in this state (default failed)")

    sp = with_json(with_config(cmd(
        "feedback", cmd_feedback, "take a receiver's complaint (ARF) from standard input or "
                                  "--maildir DIR and count it against the identity; "
                                  "'feedback list' lists kept and counted ones")))
    sp.add_argument("action", nargs="?", choices=["read", "list"], default="read",
                    help="read (default): take complaints; list: show the kept and counted ones")
    sp.add_argument("--maildir", metavar="DIR",
                    help="read every message of this Maildir (new/ and cur/) instead of stdin")

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
    with_json(sp)

    sp = cmd("quarantine", cmd_quarantine, "list, release or delete messages Outpost quarantined "
                                           "(Postfix hold queue)")
    sp.add_argument("action", choices=["list", "release", "delete"])
    sp.add_argument("queue_id", nargs="?")
    with_json(sp)
    sp.add_argument("--postfix-config", default="/etc/postfix", metavar="DIR",
                    help="the Postfix instance's configuration directory (default /etc/postfix)")
    sp.add_argument("-c", "--config", default=None,
                    help="configuration whose quarantine.training_dir keeps released and deleted "
                         f"messages for training (default $OUTPOST_CONFIG, else {DEFAULT_CONFIG} "
                         "if it exists)")

    sp = with_config(cmd("panel", cmd_panel, "serve the web panel (see docs/panel.rst); "
                                             "'panel passwd NAME' prints a password hash"))
    sp.add_argument("action", nargs="?", choices=["serve", "passwd"], default="serve")
    sp.add_argument("name", nargs="?", help="passwd: the account name")
    sp.add_argument("--listen", metavar="HOST:PORT", help="override panel.listen")
    sp.add_argument("--role", choices=["viewer", "operator"], default="viewer",
                    help="passwd: the role written in the printed line (default viewer)")

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
        more = len(exc.errors) - 1
        print(f"outpost: configuration error: {exc}"
              + (f"\noutpost: ({more} more error{'s' if more > 1 else ''}: "
                 f"outpost check-config --strict lists every one)" if more > 0 else ""),
              file=sys.stderr)
        return 2
    except TargetError as exc:
        print(f"outpost: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"outpost: store error, the command did not complete: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130
