"""Reload publishing: the texts a worker validated are exactly what the others load."""

from __future__ import annotations

from pathlib import Path

import redis.asyncio as aioredis

from exchange.catalog import load_config_texts, read_config_texts
from exchange.catalog.channel import ConfigChannel

ROOT = Path(__file__).resolve().parents[2]


async def test_published_texts_round_trip_with_versions(
    redis_client: aioredis.Redis, redis_prefix: str, tmp_path: Path
) -> None:
    channel = ConfigChannel(redis_client, redis_prefix)
    assert await channel.version() == 0
    assert await channel.latest() is None
    texts = read_config_texts(ROOT / "config")
    assert await channel.publish(texts) == 1
    version, got = await channel.latest() or (0, {})
    assert version == 1 and got == texts
    # Env references stay unresolved in Redis: resolved secrets never leave the worker.
    assert "${ACME_SECRET:-acme-demo-secret}" in got["buyers.yaml"]
    assert load_config_texts(got) == load_config_texts(texts)
    changed = {**texts, "settings.yaml": "settings: {tmax_ms: 200}\n"}
    assert await channel.publish(changed) == 2
    version, got = await channel.latest() or (0, {})
    assert version == 2 and load_config_texts(got).settings.tmax_ms == 200
    keys = [k async for k in redis_client.scan_iter(match=redis_prefix + "*")]
    assert keys and all(k.decode().startswith(redis_prefix) for k in keys)
