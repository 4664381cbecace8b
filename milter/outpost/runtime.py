"""The composition root: build every part Outpost needs from one Config.

A :class:`Runtime` is built once per configuration in each worker process
and handed to the milter factory; nothing is kept in module-level state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

from .config import Config
from .core.idtoken import TokenCodec, read_secret
from .core.policy import Policy
from .stats import StatsRecorder
from .store import open_store
from .store.base import Store

log = logging.getLogger("outpost")


class StartupError(Exception):
    """Outpost cannot start with this configuration (secret, store, keys…)."""


def open_configured_store(config: Config) -> Store:
    """The store named by the config (wrapped for ``on_store_error: local``)."""
    return open_store(config.store, config.store_settings)


def open_shared_store(config: Config) -> Store:
    """The configured store itself, for the operator commands: never the
    process-local fallback of ``on_store_error: local`` (a lock or reset
    made in the command's own memory would be lost when it exits), so a
    failing store raises :class:`~outpost.store.base.StoreError`."""
    from dataclasses import replace
    return open_store(config.store, replace(config.store_settings, on_store_error="tempfail"))


@dataclass(frozen=True)
class Secrets:
    """What a configuration needs read from protected files: the token
    secret and the DKIM keys (None: signing off).  ``outpost run --user``
    reads them as root, before it drops privileges; the workers get them
    from the master, not from the files."""
    secret: bytes
    dkim_keys: Optional[dict]


def load_secrets(config: Config) -> Secrets:
    """Read the secret file and the DKIM keys (:class:`StartupError` if one
    cannot be read or is unsafe)."""
    try:
        secret = read_secret(config.secret_file)
    except OSError as exc:
        raise StartupError(f"secret_file {config.secret_file}: {exc.strerror} "
                           f"(create one with: outpost secret {config.secret_file})") from None
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    keys = None
    if config.dkim.settings is not None:
        from .effects.dkim import DkimError, load_keys
        try:
            keys = load_keys(config.dkim.settings)
        except (ValueError, OSError, DkimError) as exc:
            raise StartupError(str(exc)) from None
    return Secrets(secret, keys)


@dataclass
class Runtime:
    config: Config
    store: Store
    codec: TokenCodec
    policy: Policy
    #: this process' message counts for ``outpost stats`` (flushed to the store)
    stats: Optional[StatsRecorder] = None

    @classmethod
    def build(cls, config: Config, secrets: Optional[Secrets] = None) -> "Runtime":
        """``secrets``: as read by :func:`load_secrets` (default: read now)."""
        if secrets is None:
            secrets = load_secrets(config)
        codec = TokenCodec(secrets.secret)
        try:
            store = open_configured_store(config)
        except (ValueError, OSError) as exc:
            from .store.url import redact_url
            raise StartupError(f"store {redact_url(config.store)}: {exc}") from None
        from .effects.dkim import DkimError
        from .effects.resolver import ResolverSettings, make_resolver
        from .effects.spf import SpfError
        from .spam.from_config import build_engine
        resolver = make_resolver(config.dns or ResolverSettings())
        signer = spf = None
        try:
            if config.dkim.settings is not None:
                from .effects.dkim import Signer
                signer = Signer(config.dkim.settings, keys=secrets.dkim_keys)
            if config.spf is not None:
                from .effects.spf import SpfChecker
                spf = SpfChecker(config.spf, resolver)
            engine = build_engine(config, store, resolver)
        except (ValueError, OSError, DkimError, SpfError) as exc:
            store.close()
            raise StartupError(str(exc)) from None
        reporter = None
        if config.reports is not None:
            problem = config.reports.listener_problem()
            if problem is not None:
                store.close()
                raise StartupError(problem)
            from .effects.reports import Spool, SpoolError
            try:
                reporter = Spool.from_settings(config.reports).put
            except (SpoolError, OSError) as exc:
                store.close()
                raise StartupError(f"reports.spool_dir {config.reports.spool_dir}: {exc}") from None
        return cls(config=config, store=store, codec=codec,
                   stats=StatsRecorder(store, config.store_settings.max_stat_names),
                   policy=Policy(config, store, codec, engine=engine, reporter=reporter,
                                 signer=signer, spf=spf))

    def close(self) -> None:
        if self.policy.engine is not None:
            self.policy.engine.close()
        self.store.close()
