"""The exchange's configuration: verticals, publishers, buyers and their campaigns."""

from exchange.catalog.index import Catalog, Target, hash_api_key
from exchange.catalog.loader import (
    ConfigError,
    ConfigIssue,
    load_config,
    load_config_texts,
    read_config_texts,
)

__all__ = [
    "Catalog",
    "ConfigError",
    "ConfigIssue",
    "Target",
    "hash_api_key",
    "load_config",
    "load_config_texts",
    "read_config_texts",
]
