"""How one worker's reload reaches the others: the validated config texts, in Redis.

Publishing the texts themselves (not just "reload now") means every worker builds the
same config even if the files change again in the meantime. The texts are the YAML as
written, ``${ENV}`` references unresolved, so resolved secrets never sit in Redis. The
two keys share a hash tag: one script writes both atomically.
"""

from __future__ import annotations

from typing import Any, cast

import orjson
from redis.asyncio import Redis

_PUBLISH = """
local version = redis.call('INCR', KEYS[1])
redis.call('SET', KEYS[2], ARGV[1])
return version
"""


class ConfigChannel:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._version = f"{prefix}cfg:{{config}}:version"
        self._texts = f"{prefix}cfg:{{config}}:texts"
        self._publish = redis.register_script(_PUBLISH)

    async def publish(self, texts: dict[str, str]) -> int:
        """Make ``texts`` the config of every worker; returns its new version."""
        version = await self._publish(keys=[self._version, self._texts], args=[orjson.dumps(texts)])
        return int(cast(int, version))

    async def version(self) -> int:
        raw = await self._redis.get(self._version)
        return int(raw) if raw is not None else 0

    async def latest(self) -> tuple[int, dict[str, str]] | None:
        """The published version and its texts, read together; None if nothing was published."""
        raw_version, raw_texts = await self._redis.mget([self._version, self._texts])
        if raw_version is None or raw_texts is None:
            return None
        texts: Any = orjson.loads(raw_texts)
        return int(raw_version), {str(k): str(v) for k, v in texts.items()}
