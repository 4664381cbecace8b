"""Build the scoring engine a configuration asks for."""

from __future__ import annotations

import logging
from typing import Optional

from ..config.model import Config
from ..store.base import Store, StoreError
from .base import Check
from .engine import ContentCache, Engine, ScoringSettings, default_checks

log = logging.getLogger("outpost.spam")

#: Store blob holding the operator-trained model (``outpost train``).
MODEL_BLOB = "bayes-model"


def load_model(store: Optional[Store]):
    """The shipped default model, merged with the operator's trained model
    when the store holds one."""
    from .bayes import Model, ModelError, load_default_model
    model = load_default_model()
    if store is None:
        return model
    try:
        blob = store.get_blob(MODEL_BLOB)
    except StoreError as exc:
        log.warning("cannot read the trained model from the store (%s); using the default model", exc)
        return model
    if blob:
        try:
            model = model.merge(Model.from_bytes(blob))
        except ModelError as exc:
            log.error("the trained model in the store is unreadable (%s); using the default model", exc)
    return model


def build_engine(config: Config, store: Optional[Store], resolver=None) -> Optional[Engine]:
    """The engine, or None when ``spam.enabled`` is false."""
    sc = config.spam
    if not sc.enabled:
        return None
    checks: list[Check] = list(default_checks(load_model(store), sc.bayes, sc.rules))
    if store is not None and sc.bulk is not None:
        from .bulk import BulkCheck
        checks.append(BulkCheck(store, sc.bulk))
    if sc.blocklists is not None and (sc.blocklists.url_files or sc.blocklists.sender_files):
        from .blocklists import BlocklistCheck
        checks.append(BlocklistCheck(sc.blocklists))
    if sc.dnslists is not None and sc.dnslists.lists:
        from ..effects.resolver import ResolverSettings, make_resolver
        from .dnslists import DnsListCheck, DnsListChecker
        checks.append(DnsListCheck(DnsListChecker(
            sc.dnslists, resolver or make_resolver(config.dns or ResolverSettings()))))
    if sc.spamassassin is not None:
        from .external import SpamdCheck
        checks.append(SpamdCheck(sc.spamassassin))
    if sc.rspamd is not None:
        from .external import RspamdCheck
        checks.append(RspamdCheck(sc.rspamd))
    d = config.defaults.spam
    settings = ScoringSettings(
        unsure=d.unsure, spam=d.spam, weights=dict(sc.weights), disabled=sc.disabled,
        failure_policy={c.name: getattr(c, "on_error", "ignore") for c in checks},
        max_evidence_len=sc.max_evidence_len, max_scan=sc.max_scan,
        max_scan_headers=sc.max_scan_headers)
    return Engine(checks, settings, ContentCache())
