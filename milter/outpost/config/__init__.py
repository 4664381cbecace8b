"""Configuration: YAML → frozen typed objects, validated with located errors."""

from .model import (
    Config,
    Domain,
    IdentityHeader,
    Limits,
    LockPolicy,
    RateLimit,
    User,
    UserPolicy,
)
from .parse import load_config, parse_config, parse_network, parse_rate
from .source import ConfigError

__all__ = ["Config", "ConfigError", "Domain", "IdentityHeader", "Limits", "LockPolicy", "RateLimit",
           "User", "UserPolicy", "load_config", "parse_config", "parse_network", "parse_rate"]
