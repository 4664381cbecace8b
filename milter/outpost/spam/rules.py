"""Hand-written content checks.

Each rule is a :class:`Check` whose ``name`` is also the name of the
evidence it gives; its points come from :class:`RulesSettings`.  Rules only
read the :class:`MessageView` and run in bounded time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from ..core.addresses import read_address as parseaddr  # survive nested comments
from ..core.addresses import read_addresses as getaddresses
from .base import Check, Evidence, MessageView, ScanContext
from .message import address_domains, normalise_host

# Second-level labels under which registrations happen (co.uk, com.au, …).
_SLD = frozenset("co com net org gov edu ac or ne go gob mil nic ltd plc me".split())

DEFAULT_SHORTENERS = frozenset("""
bit.ly bitly.com tinyurl.com goo.gl t.co ow.ly is.gd v.gd buff.ly rebrand.ly cutt.ly
shorturl.at tiny.cc rb.gy t.ly s.id tr.im cli.gs x.co lnkd.in db.tt qr.ae adf.ly
bl.ink short.io tiny.one shorte.st soo.gd clck.ru u.to
""".split())

DEFAULT_FREEMAIL = frozenset("""
gmail.com googlemail.com yahoo.com yahoo.co.uk yahoo.fr yahoo.de ymail.com rocketmail.com
hotmail.com hotmail.co.uk hotmail.fr outlook.com live.com msn.com aol.com aim.com
gmx.com gmx.de gmx.net web.de mail.com mail.ru yandex.ru yandex.com inbox.ru list.ru bk.ru
icloud.com me.com mac.com protonmail.com proton.me zoho.com tutanota.com qq.com 163.com
126.com sina.com netscape.net excite.com lycos.com juno.com earthlink.net usa.net
""".split())

# Brand -> the registered domains it legitimately sends from.
DEFAULT_BRANDS: dict[str, tuple[str, ...]] = {
    "paypal": ("paypal.com", "paypal.co.uk", "paypal.de"),
    "apple": ("apple.com", "icloud.com"),
    "icloud": ("apple.com", "icloud.com"),
    "microsoft": ("microsoft.com", "outlook.com", "office.com", "live.com"),
    "office 365": ("microsoft.com", "office.com"),
    "outlook": ("microsoft.com", "outlook.com"),
    "amazon": ("amazon.com", "amazon.co.uk", "amazon.de", "amazonses.com"),
    "netflix": ("netflix.com",),
    "ebay": ("ebay.com", "ebay.co.uk", "ebay.de"),
    "google": ("google.com", "gmail.com"),
    "facebook": ("facebook.com", "facebookmail.com", "meta.com"),
    "instagram": ("instagram.com", "facebookmail.com"),
    "linkedin": ("linkedin.com",),
    "dhl": ("dhl.com", "dhl.de"),
    "fedex": ("fedex.com",),
    "ups": ("ups.com",),
    "usps": ("usps.com",),
    "docusign": ("docusign.com", "docusign.net"),
    "dropbox": ("dropbox.com",),
    "wells fargo": ("wellsfargo.com",),
    "bank of america": ("bankofamerica.com", "bofa.com"),
    "chase": ("chase.com", "jpmorgan.com"),
    "citibank": ("citi.com", "citibank.com"),
    "hsbc": ("hsbc.com", "hsbc.co.uk"),
    "barclays": ("barclays.com", "barclays.co.uk"),
    "american express": ("americanexpress.com", "aexp.com"),
    "visa": ("visa.com",),
    "mastercard": ("mastercard.com",),
    "irs": ("irs.gov",),
    "hmrc": ("hmrc.gov.uk",),
}

EXECUTABLE_EXTS = frozenset("exe scr js jse vbs vbe bat cmd com pif jar hta msi cpl lnk wsf wsh ps1 reg "
                            "iso img".split())
DOCUMENT_EXTS = frozenset("pdf doc docx xls xlsx ppt pptx txt rtf jpg jpeg png gif zip rar htm html".split())
MACRO_EXTS = frozenset("docm dotm xlsm xltm xlam pptm potm ppsm ppam sldm".split())

_HOSTLIKE_RE = re.compile(r"^(?:(?:https?|ftp)://(?:www\.)?|www\.)([a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,24})"
                          r"(?:[:/?#]\S*)?$", re.IGNORECASE)
_FORM_RE = re.compile(r"<form\b", re.IGNORECASE)
_PASSWORD_INPUT_RE = re.compile(r"<input\b[^>]*\btype\s*=\s*[\"']?password", re.IGNORECASE)


def base_domain(host: str) -> str:
    """Registered domain approximation: ``a.b.example.co.uk`` -> ``example.co.uk``."""
    labels = host.lower().rstrip(".").split(".")
    if len(labels) <= 2:
        return ".".join(labels)
    if labels[-2] in _SLD and len(labels[-1]) == 2:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


def addr_domain(addr: str) -> str:
    """Lower-case domain of an address ('' if none)."""
    _, _, dom = addr.rpartition("@")
    return normalise_host(dom.strip(" <>")) if dom else ""


def _ext(filename: str) -> str:
    return filename.rsplit(".", 1)[-1].lower().strip() if "." in filename else ""


@dataclass(frozen=True)
class RulesSettings:
    """Points and parameters of the hand-written rules."""

    phish_link_mismatch: float = 3.0
    html_password_form: float = 3.5
    url_shortener: float = 0.5
    from_display_addr_mismatch: float = 1.5
    from_brand_spoof: float = 1.5
    replyto_freemail: float = 1.5
    attach_executable: float = 5.0
    attach_double_ext: float = 6.0
    attach_macro: float = 2.5
    missing_date: float = 0.3
    missing_message_id: float = 0.3
    many_header_recipients: float = 1.5
    max_header_recipients: int = 50
    shorteners: frozenset[str] = DEFAULT_SHORTENERS
    freemail_domains: frozenset[str] = DEFAULT_FREEMAIL
    brands: tuple[tuple[str, tuple[str, ...]], ...] = tuple(DEFAULT_BRANDS.items())

    def __post_init__(self) -> None:
        if self.max_header_recipients < 1:
            raise ValueError("max_header_recipients must be >= 1")
        for name in _RULE_NAMES:
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or v != v:
                raise ValueError("%s: points must be a number" % name)


class Rule(Check):
    """A check that gives at most one piece of evidence named after it."""

    content_only = True                      # a rule reads the view only (``match``)

    def __init__(self, settings: Optional[RulesSettings] = None) -> None:
        self.settings = settings if settings is not None else RulesSettings()

    @property
    def points(self) -> float:
        return float(getattr(self.settings, self.name))

    def check(self, msg: MessageView, ctx: ScanContext) -> list[Evidence]:
        detail = self.match(msg)
        if detail is None or not self.points:
            return []
        return [Evidence(self.name, self.points, detail[:200])]

    def match(self, msg: MessageView) -> Optional[str]:
        """A detail string when the rule fires, else None."""
        raise NotImplementedError


def _from(msg: MessageView) -> tuple[str, str]:
    name, addr = parseaddr(msg.header("From") or "")
    return name, addr


class PhishLinkMismatch(Rule):
    """An HTML link whose text shows one domain while it leads to another."""

    name = "phish_link_mismatch"

    def match(self, msg: MessageView) -> Optional[str]:
        for u in msg.urls:
            if not u.text:
                continue
            m = _HOSTLIKE_RE.match(u.text.strip())
            if not m:
                continue
            shown = normalise_host(m.group(1))
            if shown and base_domain(shown) != base_domain(u.host):
                return "text %s -> %s" % (shown, u.host)
        return None


class HtmlPasswordForm(Rule):
    """An HTML form asking for a password inside the mail."""

    name = "html_password_form"

    def match(self, msg: MessageView) -> Optional[str]:
        if msg.html and _FORM_RE.search(msg.html) and _PASSWORD_INPUT_RE.search(msg.html):
            return "form with password input"
        return None


class UrlShortener(Rule):
    """Links through a URL shortener (hide the destination)."""

    name = "url_shortener"

    def match(self, msg: MessageView) -> Optional[str]:
        for u in msg.urls:
            if u.host in self.settings.shorteners or base_domain(u.host) in self.settings.shorteners:
                return u.host
        return None


class FromDisplayAddrMismatch(Rule):
    """The From display name holds an address of another domain
    (``"service@bank.com" <x@elsewhere.example>``)."""

    name = "from_display_addr_mismatch"

    reads_headers = frozenset({"from"})

    def match(self, msg: MessageView) -> Optional[str]:
        name, addr = _from(msg)
        dom = addr_domain(addr)
        for shown in address_domains(name):
            shown = normalise_host(shown)
            if shown and dom and base_domain(shown) != base_domain(dom):
                return "name shows %s, address %s" % (shown, dom)
        return None


class FromBrandSpoof(Rule):
    """The From display name names a brand or bank that the address
    domain does not belong to."""

    name = "from_brand_spoof"

    reads_headers = frozenset({"from"})

    def match(self, msg: MessageView) -> Optional[str]:
        name, addr = _from(msg)
        if not name:
            return None
        low = " " + re.sub(r"[^a-z0-9]+", " ", name.lower()) + " "
        dom = base_domain(addr_domain(addr))
        for brand, domains in self.settings.brands:
            if " %s " % brand in low and dom not in domains:
                return "%r from %s" % (brand, dom or "?")
        return None


class ReplyToFreemail(Rule):
    """Replies go to a free-mail address of another domain than From."""

    name = "replyto_freemail"

    reads_headers = frozenset({"reply-to", "from"})

    def match(self, msg: MessageView) -> Optional[str]:
        reply_to = msg.header("Reply-To")
        if not reply_to:
            return None
        _, addr = _from(msg)
        fdom = addr_domain(addr)
        for _, raddr in getaddresses([reply_to])[:20]:
            rdom = addr_domain(raddr)
            if rdom in self.settings.freemail_domains and rdom != fdom:
                return "reply-to %s, from %s" % (rdom, fdom or "?")
        return None


def _attachment_names(msg: MessageView) -> list[str]:
    names = []
    for a in msg.attachments:
        if a.filename:
            names.append(a.filename)
        names.extend(m.rsplit("/", 1)[-1] for m in a.members)
    return names


class AttachExecutable(Rule):
    """An executable or script attachment (also inside a zip)."""

    name = "attach_executable"

    def match(self, msg: MessageView) -> Optional[str]:
        for n in _attachment_names(msg):
            if _ext(n) in EXECUTABLE_EXTS:
                return n
        return None


class AttachDoubleExt(Rule):
    """An executable dressed as a document: ``invoice.pdf.exe``."""

    name = "attach_double_ext"

    def match(self, msg: MessageView) -> Optional[str]:
        for n in _attachment_names(msg):
            parts = n.lower().rstrip(" .").split(".")
            if len(parts) >= 3 and parts[-1].strip() in EXECUTABLE_EXTS \
                    and parts[-2].strip() in DOCUMENT_EXTS:
                return n
        return None


class AttachMacro(Rule):
    """An Office document with macros (by extension or a vbaProject.bin)."""

    name = "attach_macro"

    def match(self, msg: MessageView) -> Optional[str]:
        for a in msg.attachments:
            if _ext(a.filename) in MACRO_EXTS:
                return a.filename
            if any(m.lower().endswith("vbaproject.bin") for m in a.members):
                return (a.filename or a.content_type) + " has vbaProject.bin"
        return None


class MissingDate(Rule):
    name = "missing_date"

    def match(self, msg: MessageView) -> Optional[str]:
        return None if msg.header("Date") else "no Date header"


class MissingMessageId(Rule):
    name = "missing_message_id"

    def match(self, msg: MessageView) -> Optional[str]:
        return None if msg.header("Message-ID") else "no Message-ID header"


class ManyHeaderRecipients(Rule):
    """More than ``max_header_recipients`` addresses in To and Cc."""

    name = "many_header_recipients"

    # To and Cc differ for each recipient of a mailing: not worth a cache key (10 µs)
    content_only = False

    def match(self, msg: MessageView) -> Optional[str]:
        limit = self.settings.max_header_recipients
        values = msg.header_all("To") + msg.header_all("Cc")
        # count cheaply: '@' signs, bounded by header length limits
        n = sum(v.count("@") for v in values)
        return "%d addresses in To/Cc" % n if n > limit else None


RULE_CLASSES: tuple[type[Rule], ...] = (
    PhishLinkMismatch, HtmlPasswordForm, UrlShortener, FromDisplayAddrMismatch,
    FromBrandSpoof, ReplyToFreemail, AttachExecutable, AttachDoubleExt, AttachMacro,
    MissingDate, MissingMessageId, ManyHeaderRecipients,
)
_RULE_NAMES = tuple(c.name for c in RULE_CLASSES)


def default_rules(settings: Optional[RulesSettings] = None) -> list[Check]:
    """One instance of every hand-written rule."""
    settings = settings if settings is not None else RulesSettings()
    return [cls(settings) for cls in RULE_CLASSES]
