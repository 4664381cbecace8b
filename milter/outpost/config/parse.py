"""Turn the YAML document into a :class:`~.model.Config`, validating as we go.

Every error names the file, the line and the key path, e.g.
``outpost.yaml:14: users[1].ips[0]: '192.0.2.300' is not an IP network``.
Unknown keys are errors.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import glob
import ipaddress
import os
import re
import socket
import typing
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, AbstractSet, Any, Callable, Mapping, Optional, TypeVar

from ..core.addresses import idna_domain
from ..store.settings import OnStoreError
from .model import (
    Config,
    DkimConfig,
    Domain,
    FeedbackSettings,
    HeaderFromMode,
    IdentityHeader,
    IPNetwork,
    Limits,
    LockPolicy,
    LogSettings,
    MetricsSettings,
    Mode,
    QuarantineSettings,
    RateLimit,
    SpamAction,
    SpamConfig,
    SpamPolicy,
    User,
    UserPolicy,
    UserType,
    VolumeSettings,
)
from .source import DURATION_UNITS, ConfigError, Node, parse_text

if TYPE_CHECKING:
    from ..effects.dkim import DkimKey
    from ..effects.reports import ReportSettings
    from ..effects.spf import SpfSettings
    from ..store.url import StoreURL

T = TypeVar("T")
S = TypeVar("S")

#: ``LIMIT/[COUNT]UNIT``; the units are :data:`~.source.DURATION_UNITS` (but ``ms``).
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([smhdw])\s*$")
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$")
_HEADER_NAME = re.compile(r"^[!-9;-~]+$")      # RFC 5322 ftext
_ADDRESS = re.compile(r"^[^@\s<>]+@[^@\s<>]+$")
#: ``header_from: false`` / ``no`` mean ``off`` (``off`` itself is taken as written).
HEADER_FROM_BOOLEANS = {False: "off"}

POLICY_KEYS = {"mode", "header_from", "connection_limit", "limits", "user_limits", "lock",
               "abuse_contact", "spam"}
SPAM_KEYS = {"enabled", "max_scan", "max_scan_body", "max_scan_headers", "max_evidence_len", "weights",
             "disabled", "bayes", "rules", "bulk", "blocklists", "spamassassin", "rspamd", "dnslists"}
USER_KEYS = POLICY_KEYS | {"name", "type", "ips", "logins", "domains", "identity_headers"}


def _choice(node: Node, choices: Any, booleans: Optional[dict[bool, str]] = None) -> Any:
    """One of the values of the Literal type ``choices`` (as the type says)."""
    return node.str(typing.get_args(choices), booleans=booleans)


def _change(key: str, value: Any) -> dict[str, Any]:
    """``replace(obj, **_change(key, value))``: one field named at run time."""
    return {key: value}


def bounds(minimum: Optional[int] = None, maximum: Optional[int] = None) -> dict[str, Any]:
    """Field metadata: the range of an integer setting (read by :func:`settings_from`)."""
    return {"minimum": minimum, "maximum": maximum}


def _socket_spec(spec: str, node: Node) -> str:
    _check_socket_spec(spec, node)
    return spec


def _store_url(text: str, node: Node) -> "StoreURL":
    """The one store-URL parser (:func:`outpost.store.url.parse_store_url`),
    with the error located; the parsed URL is kept (``config.store``) and
    opened as it is."""
    from ..store.url import StoreURLError, parse_store_url
    try:
        return parse_store_url(text)
    except StoreURLError as exc:
        raise node.error(f"{exc.shown} is not a store URL: {exc.reason}") from None


@dataclass(frozen=True)
class TopLevel:
    """The top level of the YAML document: one field per key, read by
    :func:`settings_from` like every other block.  Values are typed and
    checked here (``metadata``: bounds, a ``check`` taking the value and its
    node, ``booleans`` for an enum); the blocks typed ``Node`` depend on one
    another and are read by :func:`parse_config` in order."""

    listen: str = field(default="unix:/run/outpost/outpost.sock",
                        metadata={"check": _socket_spec, "nonempty": True})
    store: str = field(default="sqlite:///var/lib/outpost/state.db",
                       metadata={"check": _store_url, "nonempty": True})
    on_store_error: OnStoreError = "local"
    hostname: Optional[str] = field(default=None, metadata={"nonempty": True})  # None: getfqdn()
    secret_file: str = field(default="/etc/outpost/secret", metadata={"nonempty": True})
    connection_limit: int = field(default=10, metadata=bounds(1))
    connection_prefix_v6: int = field(default=64, metadata=bounds(16, 128))
    workers: Optional[int] = field(default=None, metadata=bounds(1, 256))
    milter_timeout: int = field(default=600, metadata=bounds(5))
    max_headers: int = field(default=1000, metadata=bounds(50))
    max_header_bytes: int = field(default=262_144, metadata=bounds(16384))
    mode: Optional[Mode] = None                  # the top of ``defaults.mode``
    header_from: Optional[HeaderFromMode] = field(default=None,
                                                  metadata={"booleans": HEADER_FROM_BOOLEANS})
    report_abuse_to: Optional[Node] = None
    log_level: Optional[Node] = None             # the older spelling of log.level
    domains: Optional[Node] = None
    domains_from: Optional[Node] = None
    users: Optional[Node] = None
    users_from: Optional[Node] = None
    defaults: Optional[Node] = None
    store_options: Optional[Node] = None
    spam: Optional[Node] = None
    reports: Optional[Node] = None
    dns: Optional[Node] = None
    dkim: Optional[Node] = None
    relay: Optional[Node] = None
    spf: Optional[Node] = None
    log: Optional[Node] = None
    metrics: Optional[Node] = None
    panel: Optional[Node] = None
    feedback: Optional[Node] = None
    volume: Optional[Node] = None
    quarantine: Optional[Node] = None


#: The top-level keys (the fields of :class:`TopLevel`).
TOP_KEYS = frozenset(f.name for f in dataclasses.fields(TopLevel))


def load_config(path: str) -> Config:
    """Read and validate a configuration file."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason})") from None
    return parse_config(text, path)


def parse_config(text: str, file: str = "<config>") -> Config:
    """Validate the document; every error found is collected (per top-level
    key and per entry of ``users`` and ``domains``, going on past a bad one)
    and raised in one :class:`ConfigError` (its message is the first)."""
    root = parse_text(text, file)
    errors: list[str] = []
    value_errors: list[str] = []      # of the plain top-level values: listed after the blocks'

    def grab(fn: Callable[[], T], default: T) -> T:
        try:
            return fn()
        except ConfigError as exc:
            errors.extend(exc.errors)
            return default

    given = root.mapping(TOP_KEYS, errors=errors)
    top = read_fields(given, TopLevel, value_errors)
    required = ["report_abuse_to"] + [k for k in ("domains", "users") if f"{k}_from" not in given]
    for key in required:
        if key not in given:
            errors.append(str(root.error(f"required key '{key}' is missing")))

    def opt(key: str) -> Node:
        return given.get(key) or Node(None, key, file, line=root.line)

    base_dir = os.path.dirname(os.path.abspath(file)) if not file.startswith("<") else os.getcwd()
    domain_files: list[tuple[str, list[Node]]] = grab(lambda: _included(opt("domains_from"), "domains", base_dir), [])
    user_files: list[tuple[str, list[Node]]] = grab(lambda: _included(opt("users_from"), "users", base_dir), [])
    no_nodes: list[Node] = []
    domain_items = grab(lambda: opt("domains").items(), no_nodes) + [i for f in domain_files for i in f[1]]
    domains = _domains(domain_items, opt("domains"), errors)
    names = {d.name for d in domains}

    base = UserPolicy()
    if top.mode is not None:
        base = replace(base, mode=top.mode)
    if top.header_from is not None:
        base = replace(base, header_from=top.header_from)
    defaults = grab(lambda: _policy(opt("defaults").mapping(POLICY_KEYS), base), base)

    user_items = grab(lambda: opt("users").items(), no_nodes) + [i for f in user_files for i in f[1]]
    users = _users(user_items, opt("users"), defaults, names, errors)

    from ..store.settings import StoreSettings
    store_settings = grab(lambda: settings_from(opt("store_options"), StoreSettings,
                                                on_store_error=top.on_store_error), StoreSettings())
    spam = grab(lambda: _spam_config(opt("spam")), SpamConfig())
    from ..effects.resolver import ResolverSettings
    dns = grab(lambda: settings_from(opt("dns"), ResolverSettings), None)
    dkim = grab(lambda: _dkim(opt("dkim"), domains), DkimConfig())
    spf = grab(lambda: _spf(opt("relay"), opt("spf")), None)
    abuse_to = grab(lambda: _address(top.report_abuse_to) if top.report_abuse_to else "", "")
    reports = grab(lambda: _reports(opt("reports"), abuse_to, top.hostname), None) if abuse_to else None
    log = grab(lambda: _log(opt("log"), top.log_level), LogSettings())
    metrics = grab(lambda: _metrics(top.metrics) if top.metrics is not None else None, None)
    from ..panel.settings import PanelSettings  # the panel: block (outpost panel)
    panel = grab(lambda: settings_from(top.panel, PanelSettings) if top.panel is not None else None, None)
    feedback = grab(lambda: settings_from(top.feedback, FeedbackSettings)
                    if top.feedback is not None else FeedbackSettings(), FeedbackSettings())
    volume = grab(lambda: _volume(top.volume) if top.volume is not None else None, None)
    quarantine = grab(lambda: settings_from(top.quarantine, QuarantineSettings)
                      if top.quarantine is not None else QuarantineSettings(), QuarantineSettings())
    errors.extend(value_errors)
    if errors:
        raise ConfigError(errors[0], errors)

    return Config(
        listen=top.listen,
        store_settings=store_settings,
        spam=spam,
        reports=reports,
        dns=dns,
        dkim=dkim,
        spf=spf,
        store=top.store,
        on_store_error=top.on_store_error,
        hostname=top.hostname if top.hostname is not None else socket.getfqdn(),
        secret_file=top.secret_file,
        report_abuse_to=abuse_to,
        connection_limit=top.connection_limit,
        connection_prefix_v6=top.connection_prefix_v6,
        domains=domains,
        users=users,
        defaults=defaults,
        workers=top.workers,
        milter_timeout=top.milter_timeout,
        max_headers=top.max_headers,
        max_header_bytes=top.max_header_bytes,
        log=log,
        metrics=metrics,
        panel=panel,
        feedback=feedback,
        volume=volume,
        quarantine=quarantine,
        source=file,
        included=tuple(path for path, _ in domain_files + user_files),
    )


def _included(node: Node, what: str, base_dir: str) -> list[tuple[str, list[Node]]]:
    """``users_from`` / ``domains_from``: glob patterns (relative to the main
    file's folder); each matching file (sorted; names not ending in ``.yaml``
    and hidden names, such as an editor's or a provisioning system's
    temporary files, are skipped) holds a YAML list of ``what``.  Returns
    (file, entries) per file; errors name the file and line."""
    out: list[tuple[str, list[Node]]] = []
    errors: list[str] = []
    seen: set[str] = set()
    for pnode in node.items():
        pattern = os.path.join(base_dir, os.path.expanduser(pnode.str().strip()))
        wildcard = glob.has_magic(pattern)
        if wildcard:
            paths = sorted(glob.glob(pattern))
        elif os.path.isfile(pattern):
            paths = [pattern]                    # named explicitly: read whatever its name
        else:
            errors.append(str(pnode.error(f"{pattern}: no such file")))
            continue
        for path in paths:
            name = os.path.basename(path)
            if path in seen or (wildcard and (not name.endswith(".yaml") or name.startswith(".")
                                              or os.path.isdir(path))):
                continue
            seen.add(path)
            try:
                with open(path, encoding="utf-8") as fh:
                    text = fh.read()
            except FileNotFoundError:
                continue                         # removed since the folder was listed
            except OSError as exc:
                errors.append(f"{path}: cannot read: {exc.strerror}")
                continue
            except UnicodeDecodeError as exc:
                errors.append(f"{path}: not UTF-8 text ({exc.reason})")
                continue
            try:
                out.append((path, parse_text(text, path, what, allow_empty=True).items()))
            except ConfigError as exc:
                errors.extend(exc.errors)
    if errors:
        raise ConfigError(errors[0], errors)
    return out


# -- pieces ----------------------------------------------------------------------

def _domain_name(node: Node) -> str:
    try:
        name = idna_domain(node.str())
    except ValueError:
        raise node.error(f"'{node.value}' is not a domain name (IDNA 2008)") from None
    if not _DOMAIN.match(name):
        raise node.error(f"'{node.value}' is not a domain name")
    return name


def _domains(items: list[Node], node: Node, errors: list[str]) -> tuple[Domain, ...]:
    """The registered domains: ``domains`` entries and those of
    ``domains_from`` files; a bad entry is reported in ``errors`` and the
    others are still read."""
    out: list[Domain] = []
    seen: dict[str, Node] = {}
    for item in items:
        try:
            keys: tuple["DkimKey", ...] = ()
            if item.is_mapping():
                fields = item.mapping({"name", "dkim"}, required=("name",))
                name = _domain_name(fields["name"])
                if "dkim" in fields:
                    keys = _dkim_keys(fields["dkim"], name)
            else:
                name = _domain_name(item)
            if name in seen:
                raise item.error(f"domain '{name}' is listed twice (first at {_at(seen[name])})")
        except ConfigError as exc:
            errors.extend(exc.errors)
            continue
        seen[name] = item
        out.append(Domain(name=name, dkim=keys))
    if not out and not errors:
        errors.append(str(node.error("at least one registered sender domain is needed")))
    return tuple(out)


def _at(node: Node) -> str:
    """``file:line`` of a node, for "first defined at" messages."""
    return f"{node.file}:{node.line}"


def _dkim_keys(node: Node, domain: str) -> tuple["DkimKey", ...]:
    """``dkim: {selector, key, algorithm}`` or a list of them (rsa and ed25519)."""
    from ..effects.dkim import DkimKey
    items = node.items() if not node.is_mapping() else [node]
    keys = tuple(settings_from(n, DkimKey, domain=domain) for n in items)
    algos = [k.algorithm for k in keys]
    if len(set(algos)) != len(algos):
        raise node.error(f"{domain}: at most one rsa and one ed25519 key")
    return keys


def _dkim(node: Node, domains: tuple[Domain, ...]) -> DkimConfig:
    from ..core.headers import STAMPED
    from ..effects.dkim import DkimSettings
    fields = node.mapping({"canonicalization", "extra_headers", "min_rsa_bits", "sign_user_domain"})
    keys = tuple(k for d in domains for k in d.dkim)
    fixed: dict[str, Any] = {"keys": keys}
    if "extra_headers" not in fields:
        fixed["extra_headers"] = STAMPED + ("X-Outpost-Class",)
    settings = settings_from(node, DkimSettings, ignore={"sign_user_domain"}, **fixed)
    sign_user = fields["sign_user_domain"].bool() if "sign_user_domain" in fields else False
    return DkimConfig(settings=settings if keys else None, sign_user_domain=sign_user)


def _spf(relay: Node, spf: Node) -> Optional["SpfSettings"]:
    """``relay:`` (egress_ips, spf_domain, helo) and ``spf:`` → SpfSettings,
    or None when no egress address is configured."""
    from ..effects.spf import SpfSettings
    rf = relay.mapping({"egress_ips", "spf_domain", "helo"})
    if "egress_ips" not in rf:
        if not spf.missing:
            raise spf.error("SPF checks need relay.egress_ips (this relay's public addresses)")
        return None
    fixed: dict[str, Any] = {"egress_ips": tuple(n.parsed(lambda v: str(ipaddress.ip_address(v)), "an IP address")
                                 for n in rf["egress_ips"].items())}
    if "spf_domain" in rf:
        fixed["relay_spf_domain"] = _domain_name(rf["spf_domain"])
    if "helo" in rf:
        fixed["helo"] = rf["helo"].str()
    sf = spf.mapping({"action", "query_timeout", "time_budget", "cache_max_entries", "cache_max_ttl"})
    if "action" in sf:
        from ..effects.spf import SpfAction
        fixed["fail_action"] = _choice(sf["action"], SpfAction)
    return settings_from(spf, SpfSettings, ignore={"action"}, **fixed)


def _log(node: Node, old_level: Optional[Node]) -> LogSettings:
    """``log: {target, facility, format, level, syslog_address}`` (the
    fields of LogSettings, their choices its Literal types); the top-level
    ``log_level`` is the older spelling of ``log.level``."""
    fields = node.mapping({f.name for f in dataclasses.fields(LogSettings)})
    if old_level is not None and "level" in fields:
        raise old_level.error("log_level is the old spelling of log.level: give only log.level")
    if old_level is not None:
        fields["level"] = old_level
    try:
        return read_fields(fields, LogSettings)
    except ConfigError:
        raise
    except ValueError as exc:                   # "log.syslog_address: …": the node names the key
        raise (fields.get("syslog_address") or node).error(str(exc).partition(": ")[2]) from None


def _address(node: Node) -> str:
    addr = node.str().strip()
    if not _ADDRESS.match(addr) or any(c in addr for c in "\r\n\0"):
        raise node.error(f"'{addr}' is not an e-mail address")
    return addr


def parse_rate(text: str) -> RateLimit:
    """``"60/1m"`` → 60 per 60 s (units s, m, h, d, w; ``"100/m"`` = 100/1m)."""
    m = _RATE.match(text) if isinstance(text, str) else None
    if not m:
        raise ValueError("a rate like 60/1m, 1000/1h or 10000/1d")
    limit, count, unit = int(m.group(1)), int(m.group(2) or 1), m.group(3)
    if limit < 1 or count < 1:
        raise ValueError("limit and window must be positive")
    return RateLimit(limit=limit, window=float(count * DURATION_UNITS[unit]), label=text.replace(" ", ""))


def _rates(node: Node) -> tuple[RateLimit, ...]:
    rates = tuple(item.parsed(parse_rate, "a rate like 60/1m") for item in node.items())
    windows = [r.window for r in rates]
    if len(set(windows)) != len(windows):
        raise node.error("two rates with the same window")
    return rates


def _limits(node: Node, base: Limits, per_message: bool) -> Limits:
    keys = {"messages", "recipients"} | ({"max_recipients"} if per_message else set())
    fields = node.mapping(keys)
    out = base
    if "messages" in fields:
        out = replace(out, messages=_rates(fields["messages"]))
    if "recipients" in fields:
        out = replace(out, recipients=_rates(fields["recipients"]))
    if "max_recipients" in fields:
        out = replace(out, max_recipients=fields["max_recipients"].int(minimum=1))
    return out


def _lock(node: Node, base: LockPolicy) -> LockPolicy:
    counts = ("after_limit_hits", "after_spam", "max_auto_unlocks", "user_after_spam",
              "user_after_limit_hits", "after_complaints", "user_after_complaints")
    zero_off = ("after_complaints", "user_after_complaints")      # 0 also switches them off
    fields = node.mapping({"window", "duration", "complaint_window", *counts})
    out = base
    for key in counts:
        if key in fields:
            value = fields[key].value
            if value is None or (value is False and key != "max_auto_unlocks") or (
                    key in zero_off and value == 0 and value is not False):
                out = replace(out, **_change(key, None))          # null, off, no, false: switched off
            else:
                out = replace(out, **_change(key, fields[key].int(
                    minimum=0 if key == "max_auto_unlocks" else 1)))
    for key in ("window", "duration", "complaint_window"):
        if key in fields:
            out = replace(out, **_change(key, fields[key].duration()))
    return out


def _policy(fields: dict[str, Node], base: UserPolicy) -> UserPolicy:
    out = base
    if "mode" in fields:
        out = replace(out, mode=_choice(fields["mode"], Mode))
    if "header_from" in fields:
        out = replace(out, header_from=_choice(fields["header_from"], HeaderFromMode,
                                               HEADER_FROM_BOOLEANS))
    if "connection_limit" in fields:
        out = replace(out, connection_limit=fields["connection_limit"].int(minimum=1))
    if "limits" in fields:
        out = replace(out, limits=_limits(fields["limits"], base.limits, per_message=True))
    if "user_limits" in fields:
        out = replace(out, user_limits=_limits(fields["user_limits"], base.user_limits, per_message=False))
    if "lock" in fields:
        out = replace(out, lock=_lock(fields["lock"], base.lock))
    if "abuse_contact" in fields:
        out = replace(out, abuse_contact=_address(fields["abuse_contact"]))
    if "spam" in fields:
        out = replace(out, spam=_spam_policy(fields["spam"], base.spam))
    return out


def _spam_policy(node: Node, base: SpamPolicy) -> SpamPolicy:
    fields = node.mapping({"unsure", "spam", "on_unsure", "on_spam", "on_unscannable"})
    out = base
    for key in ("unsure", "spam"):
        if key in fields:
            out = replace(out, **_change(key, fields[key].float()))
    for key in ("on_unsure", "on_spam", "on_unscannable"):
        if key in fields:
            out = replace(out, **_change(key, _choice(fields[key], SpamAction)))
    if out.unsure > out.spam:
        raise node.error(f"unsure ({out.unsure}) must not be above spam ({out.spam})")
    return out


def _reports(node: Node, abuse_to: str, hostname: Optional[str]) -> Optional["ReportSettings"]:
    """``reports:`` → ReportSettings, or None with ``enabled: false``."""
    from ..effects.reports import ReportSettings
    given = node.mapping() if node.is_mapping() else {}
    if "enabled" in given and not given["enabled"].bool():
        return None
    fixed: dict[str, Any] = {}
    if "to" not in given:
        fixed["to"] = abuse_to
    if "hostname" not in given and hostname:
        fixed["hostname"] = hostname
    return settings_from(node, ReportSettings, ignore={"enabled"}, **fixed)


def _volume(node: Node) -> Optional[VolumeSettings]:
    """``volume:`` → VolumeSettings (``volume:`` alone: the defaults); None
    with ``enabled: false``."""
    if node.value is None:
        return VolumeSettings()
    given = node.mapping() if node.is_mapping() else {}
    if "enabled" in given and not given["enabled"].bool():
        return None
    return settings_from(node, VolumeSettings, ignore={"enabled"})


_HOST_PORT = re.compile(r"^(?:\[([0-9A-Fa-f:.]+)\]|([0-9.]+|localhost)):(\d{1,5})$")


def _metrics(node: Node) -> Optional[MetricsSettings]:
    """``metrics: {listen: HOST:PORT, top_users: N}`` (``enabled: false``: off)."""
    fields = node.mapping({"enabled", "listen", "top_users"}) if node.value is not None else {}
    if "enabled" in fields and not fields["enabled"].bool():
        return None
    out = MetricsSettings()
    if "listen" in fields:
        text = fields["listen"].str()
        m = _HOST_PORT.match(text.strip())
        port = int(m.group(3)) if m else 0
        if not m or not 0 < port < 65536:
            raise fields["listen"].error(f"'{text}' is not HOST:PORT (127.0.0.1:9467, [::1]:9467)")
        host = m.group(1) or m.group(2)
        try:
            ipaddress.ip_address(host if host != "localhost" else "127.0.0.1")
        except ValueError:
            raise fields["listen"].error(f"'{host}' is not an IP address") from None
        out = replace(out, host=host, port=port)
    if "top_users" in fields:
        out = replace(out, top_users=fields["top_users"].int(minimum=0, maximum=1000))
    return out


def _spam_config(node: Node) -> SpamConfig:
    from ..spam.bayes import BayesCheckSettings
    from ..spam.blocklists import BlocklistSettings
    from ..spam.bulk import BulkSettings
    from ..spam.external import RspamdSettings, SpamdSettings
    from ..spam.rules import RulesSettings
    fields = node.mapping(SPAM_KEYS)
    out = SpamConfig(bayes=BayesCheckSettings(), rules=RulesSettings(), bulk=BulkSettings())
    if "enabled" in fields:
        out = replace(out, enabled=fields["enabled"].bool())
    if "max_scan" in fields and "max_scan_body" in fields:
        raise fields["max_scan"].error("max_scan is the old name of max_scan_body; give only max_scan_body")
    for key in ("max_scan", "max_scan_body"):
        if key in fields:
            out = replace(out, max_scan=fields[key].int(minimum=1024))
    if "max_scan_headers" in fields:
        out = replace(out, max_scan_headers=fields["max_scan_headers"].int(minimum=1024))
    if "max_evidence_len" in fields:
        out = replace(out, max_evidence_len=fields["max_evidence_len"].int(minimum=16, maximum=900))
    if "weights" in fields:
        out = replace(out, weights=tuple((k, v.float(minimum=0)) for k, v in fields["weights"].mapping().items()))
    if "disabled" in fields:
        out = replace(out, disabled=frozenset(fields["disabled"].str_list()))
    from ..spam.dnslists import DnsListSettings
    for key, cls in (("bayes", BayesCheckSettings), ("rules", RulesSettings), ("bulk", BulkSettings),
                     ("blocklists", BlocklistSettings), ("spamassassin", SpamdSettings),
                     ("rspamd", RspamdSettings), ("dnslists", DnsListSettings)):
        if key in fields:
            out = replace(out, **_change(key, settings_from(fields[key], cls)))
    return out


def parse_network(value: object) -> IPNetwork:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("an IP network")
    net = ipaddress.ip_network(value.strip(), strict=False)
    if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped and net.prefixlen >= 96:
        mapped = net.network_address.ipv4_mapped
        net = ipaddress.ip_network(f"{mapped}/{net.prefixlen - 96}", strict=False)
    return net


def _identity_header(node: Node) -> IdentityHeader:
    fields = node.mapping({"header", "regex", "remove"}, required=("header",))
    name = fields["header"].str().strip()
    if not _HEADER_NAME.match(name):
        raise fields["header"].error(f"'{name}' is not a header field name")
    regex = None
    if "regex" in fields:
        pattern = fields["regex"].str()
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise fields["regex"].error(f"invalid regular expression: {exc}") from None
        if regex.groups > 1:
            raise fields["regex"].error("use at most one capture group (the identity)")
    remove = fields["remove"].bool() if "remove" in fields else False
    return IdentityHeader(header=name, regex=regex, remove=remove)


def _network_item(n: Node) -> tuple[IPNetwork, IPNetwork, str]:
    net = n.parsed(parse_network, "an IP network")
    return net, net, f"network {net}"


def _login_item(n: Node) -> tuple[str, str, str]:
    login = n.str().strip()
    if any(c in login for c in "\r\n\0"):
        raise n.error("control characters in a login")
    return login, login.lower(), f"login '{login}'"


def _claimed(item: Node, fields: dict[str, Node], key: str, for_type: str, utype: str, name: str,
             owners: dict[Any, tuple[str, Node]], read: Callable[[Node], tuple[T, Any, str]]
             ) -> list[T]:
    """A user's ``ips`` or ``logins``: each read by ``read`` (value, index
    key, description), listed for no other user (``owners``: key → user,
    filled in), required for users of type ``for_type`` and refused for
    others."""
    out = []
    for n in (fields.get(key) or Node(None, "", item.file)).items():
        value, index, what = read(n)
        if index in owners:
            owner, where = owners[index]
            raise n.error(f"{what} is already listed for user '{owner}' (at {_at(where)})")
        owners[index] = (name, n)
        out.append(value)
    if utype == for_type and not out:
        raise item.error(f"user '{name}' of type {for_type} needs '{key}'")
    if utype != for_type and key in fields:
        raise fields[key].error(f"'{key}' is only for users of type {for_type}")
    return out


def _users(items: list[Node], node: Node, defaults: UserPolicy, registered: set[str],
           errors: list[str]) -> tuple[User, ...]:
    """The users: ``users`` entries and those of ``users_from`` files; a bad
    entry is reported in ``errors`` and the others are still read."""
    users: list[User] = []
    names: dict[str, Node] = {}
    networks: dict[Any, tuple[str, Node]] = {}
    logins: dict[Any, tuple[str, Node]] = {}
    failed = False
    local: list[str] = []     # the one user of type local, once seen
    for item in items:
        try:
            users.append(_user(item, defaults, registered, names, networks, logins, local))
        except ConfigError as exc:
            errors.extend(exc.errors)
            failed = True
    if not users and not failed:
        errors.append(str(node.error("no users: Outpost would refuse every sender")))
    return tuple(users)


def _user(item: Node, defaults: UserPolicy, registered: set[str], names: dict[str, Node],
          networks: dict[Any, tuple[str, Node]], logins: dict[Any, tuple[str, Node]],
          local: list[str]) -> User:
    fields = item.mapping(USER_KEYS, required=("name", "type"))
    name = fields["name"].str().strip()
    if "/" in name:      # USER/IDENTITY keys and commands split at the first '/'
        raise fields["name"].error(f"user name '{name}' must not contain '/'")
    if name in names:
        raise fields["name"].error(f"duplicate user name '{name}' (first defined at {_at(names[name])})")
    names[name] = fields["name"]
    utype: UserType = _choice(fields["type"], UserType)
    policy = _policy(fields, defaults)

    ips = _claimed(item, fields, "ips", "ip", utype, name, networks, _network_item)
    user_logins = _claimed(item, fields, "logins", "login", utype, name, logins, _login_item)
    if utype == "local":
        # Mail from sendmail(1) carries no key to tell two local users apart.
        if local:
            raise fields["type"].error(f"only one user of type local ('{local[0]}' is one)")
        local.append(name)
        if "connection_limit" in fields:
            raise fields["connection_limit"].error(
                "connection_limit is for SMTP clients; local submissions have none")

    if utype == "domain":
        dom = _domain_name(fields["name"])
        if dom not in registered:
            raise fields["name"].error(f"domain '{dom}' is not registered in 'domains'")
        if "domains" in fields:
            raise fields["domains"].error("a domain user sends as its own domain; 'domains' is not allowed")
        doms = frozenset({dom})
        name = dom
    else:
        dnodes = (fields.get("domains") or Node(None, "", item.file)).items()
        if not dnodes:
            raise item.error(f"user '{name}' needs 'domains' (the sender domains it may use)")
        doms_l = []
        for dn in dnodes:
            d = _domain_name(dn)
            if d not in registered:
                raise dn.error(f"domain '{d}' is not registered in 'domains'")
            doms_l.append(d)
        doms = frozenset(doms_l)

    headers = tuple(_identity_header(n) for n in
                    (fields.get("identity_headers") or Node(None, "", item.file)).items())
    return User(name=name, type=utype, ips=tuple(ips), logins=tuple(user_logins),
                domains=doms, identity_headers=headers, policy=policy, line=item.line)


def _check_socket_spec(spec: str, node: Node) -> None:
    if spec.startswith("unix:") or spec.startswith("local:"):
        if not spec.split(":", 1)[1].startswith("/"):
            raise node.error("a unix socket path must be absolute")
        return
    m = re.match(r"^inet6?:(\d+)(@.+)?$", spec)
    if m and 0 < int(m.group(1)) < 65536:
        return
    if re.match(r"^fd:\d+$", spec):
        return
    raise node.error(f"'{spec}' is not a socket (unix:/path, inet:PORT@HOST, inet6:PORT@HOST, fd:N)")


# -- settings dataclasses of the other layers ---------------------------------------

def settings_from(node: Node, cls: type[S], ignore: AbstractSet[str] = frozenset(),
                  **fixed: Any) -> S:
    """Fill a frozen settings dataclass from a YAML mapping.

    Keys are the dataclass' field names (unknown keys are errors); values are
    checked against the field types (int, float — durations like ``30s`` are
    accepted —, str, bool, Literal[…] choices, Optional[…], tuple[…], nested
    dataclasses) and the fields' metadata (:func:`bounds`, ``check``); the
    dataclass' own ``__post_init__`` validation errors are reported at the
    mapping's line.  ``fixed`` supplies fields that do not come from this
    mapping.
    """
    names = {f.name for f in dataclasses.fields(cls) if f.init} - set(fixed)  # type: ignore[arg-type]
    fields = node.mapping(names | set(ignore))
    return read_fields({k: v for k, v in fields.items() if k not in ignore}, cls, None, node,
                       **fixed)


def read_fields(fields: Mapping[str, Node], cls: type[S], errors: Optional[list[str]] = None,
                node: Optional[Node] = None, **fixed: Any) -> S:
    """The dataclass ``cls`` from its entries ``fields`` (key → Node), in
    the order of the dataclass' fields.  With ``errors`` a bad value is
    added to it and the field keeps its default (every error is found);
    without, the first one is raised."""
    hints = typing.get_type_hints(cls)
    values = dict(fixed)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in fields:
            continue
        try:
            values[f.name] = _typed(fields[f.name], hints[f.name], f.metadata)
        except ConfigError as exc:
            if errors is None:
                raise
            errors.extend(exc.errors)
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:
        if node is None:
            raise
        raise node.error(str(exc)) from None


def _typed(node: Node, hint: Any, meta: Mapping[str, Any] = MappingProxyType({})) -> Any:
    if hint is Node:
        return node
    if dataclasses.is_dataclass(hint):
        return settings_from(node, hint)  # type: ignore[arg-type]
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union:
        if Node in args:
            return node
        if node.value is None and type(None) in args:
            return None
        present = [a for a in args if a is not type(None)]
        return _typed(node, present[0], meta)
    if origin is typing.Literal:
        return node.str(choices=args, booleans=meta.get("booleans"))
    if hint is bool:
        value: Any = node.bool()
    elif hint is int:
        value = node.int(meta.get("minimum"), meta.get("maximum"))
    elif hint is float:
        value = node.duration() if isinstance(node.value, str) else node.float()
    elif hint is str:
        value = node.str(nonempty=bool(meta.get("nonempty")))
    elif origin is tuple and len(args) >= 2 and args[1] is not Ellipsis:     # fixed length
        items = node.items()
        if len(items) != len(args):
            raise node.error(f"expected a list of {len(args)} items")
        value = tuple(_typed(n, a) for n, a in zip(items, args))
    elif origin in (tuple, list, frozenset):
        inner: Any = args[0] if args else str
        value = (frozenset if origin is frozenset else tuple)(_typed(n, inner) for n in node.items())
    elif origin in (dict, collections.abc.Mapping):
        value = {k: _typed(v, args[1]) for k, v in node.mapping().items()}
    else:
        raise node.error(f"unsupported setting type {hint!r}")
    check = meta.get("check")
    return check(value, node) if check is not None else value
