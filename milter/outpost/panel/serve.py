"""``outpost panel``: build the panel from the configuration and serve it
with waitress (a production WSGI server, pure Python, threads)."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Optional

from ..config import Config
from .settings import PanelSettings

log = logging.getLogger("outpost.panel")


class PanelStartError(RuntimeError):
    pass


def build(config: Config, settings: Optional[PanelSettings] = None):
    """(Flask app, Panel) for ``config`` (its store opened as the operator
    commands open it: the shared store itself, never a local fallback)."""
    from ..core.idtoken import TokenCodec, read_secret
    from ..runtime import open_shared_store
    try:
        from .app import create_app
    except ImportError as exc:
        raise PanelStartError(f"{exc}: the panel needs Flask and waitress (apt install python3-flask "
                              f"python3-waitress, or pip install 'outpost-milter[panel]')") from None
    from .data import Panel
    settings = settings or config.panel
    if settings is None or not settings.users:
        raise PanelStartError("no panel accounts: add panel.users to the configuration "
                              "(outpost panel passwd NAME makes a password hash)")
    try:
        store = open_shared_store(config)
    except (ValueError, OSError) as exc:
        from ..store.url import redact_url
        raise PanelStartError(f"store {redact_url(config.store)}: {exc}") from None
    if config.store.startswith("memory:"):
        log.warning("store %s is this process' memory: the panel sees nothing of the relays "
                    "(configure a sqlite:// or redis:// store)", config.store)
    codec, problem = None, ""
    try:
        codec = TokenCodec(read_secret(config.secret_file))
    except (OSError, ValueError) as exc:
        problem = f"secret file {config.secret_file}: {exc}"
        log.warning("panel: whois is off: %s", problem)
    panel = Panel(config, store, codec, problem)
    return create_app(config, panel, settings), panel


def serve(config: Config, listen: Optional[str] = None) -> int:
    try:
        import waitress
    except ImportError as exc:
        raise PanelStartError(f"{exc}: the panel is served by waitress (apt install python3-waitress, "
                              f"or pip install 'outpost-milter[panel]')") from None
    settings = config.panel or PanelSettings()
    if listen:
        settings = replace(settings, listen=listen)
    host, port = settings.address()
    app, panel = build(config, settings)
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    log.info("outpost panel on http://%s%s/ (%d accounts)", where, settings.url_prefix,
             len(settings.users))
    try:
        waitress.serve(app, listen=where, threads=settings.threads,
                       url_prefix=settings.url_prefix, ident="outpost-panel",
                       clear_untrusted_proxy_headers=True)
    finally:
        panel.store.close()
    return 0
