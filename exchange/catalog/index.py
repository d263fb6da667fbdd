"""The config in the shape the hot path reads it: dict lookups, nothing parsed per lead."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

from exchange.catalog.loader import load_config
from exchange.catalog.models import Buyer, Campaign, Config, ExchangeSettings, Publisher, Vertical


@dataclass(frozen=True, slots=True)
class Target:
    """One campaign of one buyer: the unit that is filtered, pinged, capped and sold to."""

    buyer: Buyer
    campaign: Campaign

    @property
    def key(self) -> str:
        return self.campaign.id


class Catalog:
    """An immutable snapshot of the config; reloads swap the whole object."""

    def __init__(self, config: Config, version: int = 1) -> None:
        self.config = config
        self.version = version
        self.settings: ExchangeSettings = config.settings
        self.verticals: dict[str, Vertical] = dict(config.verticals)
        self.publishers: dict[str, Publisher] = {p.id: p for p in config.publishers}
        self._by_key_hash: dict[str, Publisher] = {p.api_key_sha256: p for p in config.publishers}
        self.buyers: dict[str, Buyer] = {b.id: b for b in config.buyers}
        self.targets: dict[str, Target] = {}
        self.by_vertical: dict[str, tuple[Target, ...]] = {}
        grouped: dict[str, list[Target]] = {v: [] for v in self.verticals}
        for buyer in config.buyers:
            for campaign in buyer.campaigns:
                target = Target(buyer, campaign)
                self.targets[campaign.id] = target
                grouped.setdefault(campaign.vertical, []).append(target)
        self.by_vertical = {v: tuple(ts) for v, ts in grouped.items()}

    @classmethod
    def load(cls, directory: str | Path, version: int = 1) -> Catalog:
        return cls(load_config(directory), version)

    def publisher_for_key(self, api_key: str) -> Publisher | None:
        """The publisher whose key hashes to the stored digest, compared in constant time."""
        digest = hashlib.sha256(api_key.encode()).hexdigest()
        found = self._by_key_hash.get(digest)
        # The dict lookup leaks nothing useful (the digest is of a secret the caller holds);
        # the explicit compare keeps the check honest should the lookup ever change.
        if found is not None and hmac.compare_digest(found.api_key_sha256, digest):
            return found
        return None


def hash_api_key(api_key: str) -> str:
    """What goes into ``api_key_sha256`` for a publisher key."""
    return hashlib.sha256(api_key.encode()).hexdigest()
