"""Configuration: YAML → frozen typed objects, validated with located errors."""

from .model import (  # noqa: F401
    Config, Domain, IdentityHeader, Limits, LockPolicy, RateLimit, User, UserPolicy,
)
from .parse import load_config, parse_config, parse_network, parse_rate  # noqa: F401
from .source import ConfigError  # noqa: F401

__all__ = ["Config", "ConfigError", "Domain", "IdentityHeader", "Limits", "LockPolicy", "RateLimit",
           "User", "UserPolicy", "load_config", "parse_config", "parse_network", "parse_rate"]
