"""Outpost: an outbound mail filter (milter) for shared mail relays."""

__version__ = "0.1.0"
