"""Outpost: an outbound mail filter (milter) for shared mail relays."""

__version__ = "0.2.0.dev0"
