"""Read the buyers and timing of an exchange config dir (SPEC §2) with plain YAML.

The load tools must run before, and independently of, the exchange package, so this reads
only what they need: buyer ids, URLs, secrets, timeouts and campaign verticals.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def resolve_env(value: str) -> str:
    """Replace each ``${VAR}`` / ``${VAR:-default}`` by the env var, else the default, else ''."""
    return _ENV_REF.sub(lambda m: os.environ.get(m[1], m[2] or ""), value)


@dataclass(frozen=True)
class Endpoint:
    """Where one buyer URL listens: host, port and path."""

    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        if parts.hostname is None:
            raise ValueError(f"URL without a host: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.hostname, port, parts.path or "/")


@dataclass(frozen=True)
class ConfigBuyer:
    """One buyer of the config: what the fleet and the baseline need of it."""

    buyer_id: str
    secret: str | None
    ping_url: str | None
    post_url: str | None
    timeout_ms: int
    campaigns: tuple[tuple[str, str], ...] = field(default=())  # (campaign_id, vertical)


def read_config(config_dir: Path | str) -> dict[str, Any]:
    """Merge every ``*.yaml`` of the dir: mappings merge key by key, lists concatenate."""
    merged: dict[str, Any] = {}
    for path in sorted(Path(config_dir).glob("*.yaml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(doc, dict):
            raise ValueError(f"{path.name}: the top level must be a mapping")
        _merge(merged, doc)
    return merged


def _merge(into: dict[str, Any], doc: dict[str, Any]) -> None:
    for key, value in doc.items():
        old = into.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            _merge(old, value)
        elif isinstance(old, list) and isinstance(value, list):
            old.extend(value)
        else:
            into[key] = value


def buyers_from_config(config_dir: Path | str) -> list[ConfigBuyer]:
    """The config's buyers, secrets resolved, ping timeouts clipped to ``tmax_ms``."""
    config = read_config(config_dir)
    tmax_ms = int(config.get("settings", {}).get("tmax_ms", 300))
    buyers = []
    for raw in config.get("buyers") or []:
        secret = raw.get("secret")
        campaigns = tuple(
            (str(c["id"]), str(c.get("vertical", ""))) for c in raw.get("campaigns") or []
        )
        buyers.append(
            ConfigBuyer(
                buyer_id=str(raw["id"]),
                secret=resolve_env(str(secret)) if secret is not None else None,
                ping_url=raw.get("ping_url"),
                post_url=raw.get("post_url"),
                timeout_ms=min(int(raw.get("timeout_ms", tmax_ms)), tmax_ms),
                campaigns=campaigns,
            )
        )
    return buyers


def timing_from_config(config_dir: Path | str) -> tuple[int, int]:
    """``(tmax_ms, post_timeout_ms)`` of the config, SPEC defaults where absent."""
    settings = read_config(config_dir).get("settings", {})
    return int(settings.get("tmax_ms", 300)), int(settings.get("post_timeout_ms", 2000))
