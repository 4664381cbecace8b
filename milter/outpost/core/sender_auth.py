"""DKIM signing and SPF for the policy core: which domain signs a message,
the signature over the message as the MTA will send it, and the SPF result
of the sender's domain for our egress addresses."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from ..config.model import Config, User
from . import headers as hdr
from .enforce import Enforcer
from .stamps import Fields, Removals, from_domain, kept
from .types import CONTINUE, Decision, Message, reject

if TYPE_CHECKING:
    from ..effects.dkim import Signer
    from ..effects.spf import SpfChecker


def signing_domain(config: Config, signer: "Signer", msg: Message, user: User) -> Optional[str]:
    """The domain whose key signs this message.  A signature says the
    domain's owner sent the mail: it is only ever made for a domain the
    mapped user may use (its ``domains``; a domain user's own), whatever
    the From policy (enforce, warn, off) and the mode (monitor too).
    The header From domain when it is the user's and has a key; else,
    with ``dkim.sign_user_domain``, the envelope sender's domain when it
    is the user's and has a key and the From domain is not registered."""
    domain = from_domain(msg)
    if domain and domain in user.domains and signer.has_key(domain):
        return domain
    sender = msg.sender_domain
    if (config.dkim.sign_user_domain and domain not in config.domain_names
            and sender and sender in user.domains and signer.has_key(sender)):
        return sender
    return None


def sign(signer: "Signer", msg: Message, removals: Removals, added: Fields) -> Fields:
    """DKIM-Signature header(s) over the message exactly as the MTA will
    send it: the headers received, minus the ones removed, plus ours."""
    domain = msg.sign_domain                     # decided at end of headers
    if domain is None:
        return ()
    final = kept(msg.headers, removals)
    if signer.already_signed(final, domain):
        return ()
    final.extend((name, " " + value) for name, value in added)
    body = msg.body_hash if msg.body_hash is not None else signer.body_hasher()
    signatures = signer.sign(final, body, domain)
    if signatures:                               # for the message's log line
        msg.dkim_d, msg.dkim_s = domain, ",".join(signer.selectors(domain))
    # the adapter supplies the blank after the colon: strip the signer's
    return tuple((n, v[1:] if v.startswith(" ") else v) for n, v in signatures)


def check_spf(spf: "SpfChecker", enforce: Enforcer, msg: Message, user: User) -> Optional[Decision]:
    """The SPF result of the sender's domain: its header kept in
    ``msg.spf_header``; the refusal when the SPF policy says so."""
    domain = msg.sender_domain or from_domain(msg)
    if not domain:
        return None
    result = spf.check(domain, msg.sender)
    msg.spf = result.result
    decision = spf.decide(result)
    msg.spf_header = ((decision.header[0], hdr.safe_value(decision.header[1])),)
    if decision.smtp is None:
        return CONTINUE
    code, xcode, text = decision.smtp
    return enforce.block(msg, user, reject(code, xcode, text, f"spf_{result.result}"))
