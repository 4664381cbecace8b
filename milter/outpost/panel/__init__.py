"""``outpost panel``: the operator's web panel (users, identities, locks,
volume charts, the blocked-message log, reports and quarantine), served by
waitress; Flask and its Jinja2 templates render every page on the server,
charts are inline SVG, no JavaScript is needed.

Only :mod:`.settings` and :mod:`.auth` are imported by the configuration
loader and the ``passwd`` command; the rest needs the ``panel`` extra
(Flask, waitress)."""
