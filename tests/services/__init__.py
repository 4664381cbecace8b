"""Launchers for the real services the tests talk to (Postfix, Redis, DNS,
spamd, rspamd, SMTP sinks), each bound to loopback only and torn down by the
tests that start them."""
