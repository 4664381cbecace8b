"""The configuration as frozen, typed objects (built by :mod:`.parse`)."""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Optional, Union, get_args

from ..store.settings import OnStoreError

if TYPE_CHECKING:
    from ..effects.dkim import DkimKey, DkimSettings
    from ..effects.reports import ReportSettings
    from ..effects.resolver import ResolverSettings
    from ..effects.spf import SpfSettings
    from ..panel.settings import PanelSettings
    from ..spam.bayes import BayesCheckSettings
    from ..spam.blocklists import BlocklistSettings
    from ..spam.bulk import BulkSettings
    from ..spam.dnslists import DnsListSettings
    from ..spam.external import RspamdSettings, SpamdSettings
    from ..spam.rules import RulesSettings
    from ..store.settings import StoreSettings

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

# The enumerated settings: each Literal is the one list of its values (the
# loader offers them in this order: "'x' is not one of: enforce, warn, off").
UserType = Literal["ip", "domain", "login", "local"]
HeaderFromMode = Literal["enforce", "warn", "off"]
Mode = Literal["enforce", "monitor"]
SpamAction = Literal["accept", "quarantine", "tempfail", "reject"]
SpamClass = Literal["ham", "unsure", "spam"]
VolumeAction = Literal["none", "hold", "tempfail", "lock"]
LogTarget = Literal["stderr", "syslog", "journal"]
LogFormat = Literal["text", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]
LogFacility = Literal["mail", "daemon", "user", "local0", "local1", "local2", "local3", "local4",
                      "local5", "local6", "local7"]

LOG_TARGETS: tuple[str, ...] = get_args(LogTarget)
LOG_FORMATS: tuple[str, ...] = get_args(LogFormat)
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)
#: syslog facilities a ``log.facility`` may name (RFC 5424 codes).
LOG_FACILITIES: dict[str, int] = {"mail": 2, "daemon": 3, "user": 1,
                                  **{f"local{i}": 16 + i for i in range(8)}}
assert tuple(LOG_FACILITIES) == get_args(LogFacility)


@dataclass(frozen=True)
class RateLimit:
    """``limit`` units per ``window`` seconds, written ``label`` (``60/1m``)."""

    limit: int
    window: float
    label: str


@dataclass(frozen=True)
class Limits:
    """Per-identity limits (``limits:``) or whole-user limits (``user_limits:``)."""

    messages: tuple[RateLimit, ...] = ()
    recipients: tuple[RateLimit, ...] = ()
    max_recipients: Optional[int] = None


@dataclass(frozen=True)
class LockPolicy:
    after_limit_hits: Optional[int] = None   # lock after that many limit refusals in `window`
    after_spam: Optional[int] = 5            # lock after that many spam verdicts in `window`
    window: float = 600.0
    duration: float = 3600.0
    max_auto_unlocks: Optional[int] = 3      # then the next lock is permanent
    # the same summed over all of the user's identities: lock the user as a whole
    user_after_spam: Optional[int] = 10
    user_after_limit_hits: Optional[int] = None
    # receivers' complaints (``outpost feedback``): lock the identity after that
    # many within `complaint_window` (None: off); the user as a whole likewise
    after_complaints: Optional[int] = 3
    user_after_complaints: Optional[int] = None
    complaint_window: float = 86400.0


@dataclass(frozen=True)
class IdentityHeader:
    header: str
    regex: Optional[re.Pattern[str]] = None
    remove: bool = False

    def extract(self, value: str) -> Optional[str]:
        """The identity carried by a header value, or None when it doesn't match."""
        value = value.strip()
        if self.regex is None:
            return value or None
        m = self.regex.search(value)
        if not m:
            return None
        got = m.group(1) if m.groups() else m.group(0)
        return got.strip() or None if got else None




@dataclass(frozen=True)
class SpamPolicy:
    """Per-user spam thresholds and what to do with each class."""

    unsure: float = 3.0
    spam: float = 5.0
    on_unsure: SpamAction = "accept"
    on_spam: SpamAction = "reject"
    on_unscannable: Optional[SpamAction] = None   # None: tempfail when on_spam is reject, else on_spam

    @property
    def unscannable_action(self) -> SpamAction:
        """What to do with a message whose content could not be scanned."""
        if self.on_unscannable is not None:
            return self.on_unscannable
        return "tempfail" if self.on_spam == "reject" else self.on_spam

    def classify(self, score: float) -> SpamClass:
        if score >= self.spam:
            return "spam"
        if score >= self.unsure:
            return "unsure"
        return "ham"

    def action(self, cls: str) -> SpamAction:
        if cls == "spam":
            return self.on_spam
        return self.on_unsure if cls == "unsure" else "accept"


@dataclass(frozen=True)
class UserPolicy:
    """The settings a user inherits from ``defaults:`` and may override."""

    mode: Mode = "enforce"
    header_from: HeaderFromMode = "enforce"
    connection_limit: Optional[int] = None
    limits: Limits = Limits()
    user_limits: Limits = Limits()
    lock: LockPolicy = LockPolicy()
    abuse_contact: Optional[str] = None     # report recipient for this user's blocks
    spam: SpamPolicy = SpamPolicy()


@dataclass(frozen=True)
class User:
    name: str
    type: UserType
    ips: tuple[IPNetwork, ...] = ()
    logins: tuple[str, ...] = ()
    domains: frozenset[str] = frozenset()      # sender domains this user may use
    identity_headers: tuple[IdentityHeader, ...] = ()
    policy: UserPolicy = UserPolicy()
    line: int = 0                              # where it is defined (for messages)

    @property
    def allows_null_sender(self) -> bool:
        """Bounces (``MAIL FROM:<>``) from a customer's own server."""
        return self.type == "ip"


@dataclass(frozen=True)
class SpamConfig:
    """The scoring engine (top-level ``spam:``)."""

    enabled: bool = True
    max_scan: int = 1_000_000          # bytes of the body scanned (spam.max_scan_body)
    max_scan_headers: int = 65_536     # bytes of the header block scanned
    max_evidence_len: int = 200
    weights: tuple[tuple[str, float], ...] = ()
    disabled: frozenset[str] = frozenset()
    bayes: Optional["BayesCheckSettings"] = None
    rules: Optional["RulesSettings"] = None
    bulk: Optional["BulkSettings"] = None
    blocklists: Optional["BlocklistSettings"] = None
    spamassassin: Optional["SpamdSettings"] = None
    rspamd: Optional["RspamdSettings"] = None
    dnslists: Optional["DnsListSettings"] = None


@dataclass(frozen=True)
class Domain:
    name: str
    dkim: tuple["DkimKey", ...] = ()        # signing keys (one rsa and/or one ed25519)


@dataclass(frozen=True)
class DkimConfig:
    """``dkim:`` — how signing works (the keys are under ``domains``)."""

    settings: Optional["DkimSettings"] = None   # canonicalization, extra headers, keys
    sign_user_domain: bool = False              # sign with the sender's own domain when
                                                # the From domain is not registered


@dataclass(frozen=True)
class LogSettings:
    """``log:`` — where Outpost's log lines go and how they look."""

    target: LogTarget = "stderr"
    facility: LogFacility = "mail"      # syslog facility (syslog and journal targets)
    format: LogFormat = "text"
    level: LogLevel = "info"
    syslog_address: str = "/dev/log"    # a Unix datagram socket path, or udp:HOST:PORT

    def __post_init__(self) -> None:
        for key, value, choices in (("target", self.target, LOG_TARGETS),
                                    ("format", self.format, LOG_FORMATS),
                                    ("level", self.level, LOG_LEVELS),
                                    ("facility", self.facility, tuple(LOG_FACILITIES))):
            if value not in choices:
                raise ValueError(f"log.{key}: '{value}' is not one of: {', '.join(choices)}")
        _ = self.syslog_udp        # checks the address

    @property
    def facility_code(self) -> int:
        return LOG_FACILITIES[self.facility]

    @property
    def syslog_udp(self) -> Optional[tuple[str, int]]:
        """(host, port) for ``udp:HOST:PORT``; None for a socket path."""
        addr = self.syslog_address
        if addr.startswith("/"):
            return None
        kind, _, rest = addr.partition(":")
        host, _, port = rest.rpartition(":")
        host = host.strip("[]")
        if kind != "udp" or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"log.syslog_address: '{addr}' is neither a socket path (/dev/log) "
                             f"nor udp:HOST:PORT")
        return host, int(port)


@dataclass(frozen=True)
class MetricsSettings:
    """``metrics:`` — the Prometheus endpoint served by the master."""

    host: str = "127.0.0.1"                    # address the HTTP listener binds
    port: int = 9467
    top_users: int = 20                        # per-user series: the N users with most messages

    @property
    def listen(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class FeedbackSettings:
    """``feedback:`` — receivers' complaints (ARF, ``outpost feedback``)."""

    spool_dir: str = "/var/spool/outpost/feedback"   # kept reports, the record of counted ones
    max_kept: int = 1000                # reports kept per kind (unattributed, counted); oldest go
    max_size: int = 2_000_000           # bytes of one complaint read (more: kept truncated)
    max_parts: int = 64                 # MIME parts (Content-Type fields) of one complaint
    learn_from_complaints: bool = False  # feed a reported message in full to Bayes as spam

    def __post_init__(self) -> None:
        if not self.spool_dir.startswith("/"):
            raise ValueError(f"feedback.spool_dir: '{self.spool_dir}' is not an absolute path")
        for key, value, least in (("max_kept", self.max_kept, 1), ("max_size", self.max_size, 4096),
                                  ("max_parts", self.max_parts, 4)):
            if value < least:
                raise ValueError(f"feedback.{key}: {value} is below the least allowed, {least}")


@dataclass(frozen=True)
class VolumeBaseline:
    """``volume.baseline``: per window, the baseline of an identity seen for
    the first time, and the least any identity's baseline counts as."""

    messages: float = 2.0
    recipients: float = 6.0
    domains: float = 3.0
    new_domains: float = 3.0

    def __post_init__(self) -> None:
        for key in ("messages", "recipients", "domains", "new_domains"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key} must be > 0")

    def values(self) -> tuple[float, float, float, float]:
        return (self.messages, self.recipients, self.domains, self.new_domains)


@dataclass(frozen=True)
class VolumeSettings:
    """``volume:`` — volume anomalies per identity (:mod:`outpost.core.volume`)."""

    window: float = 600.0               # seconds counted together
    half_life: float = 7 * 86400.0      # of the baseline (an exponentially weighted average)
    baseline: VolumeBaseline = VolumeBaseline()
    spike: float = 5.0                  # a window over spike x its baseline: evidence
    extreme: float = 15.0               # over extreme x its baseline: the action
    points: float = 2.0                 # evidence points at the spike, + this per doubling
    max_points: float = 4.0
    action: VolumeAction = "none"

    def __post_init__(self) -> None:
        if not 1.0 <= self.window <= 86400.0:
            raise ValueError(f"window must be 1s..1d, got {self.window}")
        if not self.half_life >= self.window:
            raise ValueError("half_life must be at least the window")
        if not 1.0 < self.spike <= self.extreme:
            raise ValueError(f"need 1 < spike ({self.spike}) <= extreme ({self.extreme})")
        if not 0 < self.points <= self.max_points <= 100:
            raise ValueError(f"need 0 < points ({self.points}) <= max_points "
                             f"({self.max_points}) <= 100")

    @property
    def decay(self) -> float:
        """What a window's weight in the baseline is multiplied by per window after it."""
        return float(0.5 ** (self.window / self.half_life))

    @property
    def ttl(self) -> float:
        """An identity idle this long is forgotten (its baseline has decayed
        to 1/32 by then): five half-lives, at least two windows."""
        return max(5 * self.half_life, 2 * self.window)


@dataclass(frozen=True)
class QuarantineSettings:
    """``quarantine:`` — what operators decide about quarantined messages,
    kept for ``outpost train --from-quarantine`` (released: ham, deleted: spam)."""

    training_dir: str = "/var/spool/outpost/training"   # released/, deleted/, learned/
    keep: float = 30 * 86400.0          # a decided message is kept this long (learned or not)
    max_kept: int = 1000                # messages kept per folder; the oldest go

    def __post_init__(self) -> None:
        if not self.training_dir.startswith("/"):
            raise ValueError(f"quarantine.training_dir: '{self.training_dir}' is not an absolute path")
        if not self.keep > 0 or self.max_kept < 1:
            raise ValueError("quarantine.keep must be > 0 and quarantine.max_kept at least 1")


@dataclass(frozen=True)
class Config:
    listen: str
    store: str      # loaded: a store.url.StoreURL (a str, parsed once; open_store opens it as is)
    hostname: str
    secret_file: str
    report_abuse_to: str
    connection_limit: int
    domains: tuple[Domain, ...]
    users: tuple[User, ...]
    defaults: UserPolicy
    store_settings: "StoreSettings" = None     # type: ignore[assignment]  # set by the loader
    spam: SpamConfig = SpamConfig()
    reports: Optional["ReportSettings"] = None   # None: reports switched off
    dns: Optional["ResolverSettings"] = None
    dkim: DkimConfig = DkimConfig()
    spf: Optional["SpfSettings"] = None          # None: no relay.egress_ips, no SPF check
    on_store_error: OnStoreError = "local"
    workers: Optional[int] = None
    max_headers: int = 1000                    # header fields in one message (more: 552 5.3.4)
    max_header_bytes: int = 262_144            # bytes of the header block (more: 552 5.3.4)
    milter_timeout: int = 600
    log: LogSettings = LogSettings()
    connection_prefix_v6: int = 64             # IPv6 clients are counted per this network
    metrics: Optional[MetricsSettings] = None  # None: no metrics endpoint
    panel: Optional["PanelSettings"] = None    # None: no panel: block (outpost panel)
    feedback: FeedbackSettings = FeedbackSettings()   # outpost feedback (complaints)
    volume: Optional[VolumeSettings] = None    # None: no volume anomalies (volume: absent or off)
    quarantine: QuarantineSettings = QuarantineSettings()
    source: str = ""                           # file it was read from
    included: tuple[str, ...] = ()             # files read through users_from / domains_from

    @property
    def log_level(self) -> LogLevel:
        """The log level (``log.level``; ``log_level`` is its older spelling)."""
        return self.log.level

    @functools.cached_property
    def domain_names(self) -> frozenset[str]:
        """Registered domain names (built once: checked for every message)."""
        return frozenset(d.name for d in self.domains)
