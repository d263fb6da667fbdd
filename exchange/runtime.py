"""Everything a worker process holds for its lifetime, opened and closed in one place."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from redis.asyncio import Redis
from redis.exceptions import RedisError

from exchange.auction.sell import AuctionDeps
from exchange.catalog import Catalog, ConfigError, Target, load_config_texts, read_config_texts
from exchange.catalog.channel import ConfigChannel
from exchange.intake.admission import Admission
from exchange.intake.guard import Guard
from exchange.intake.restore import (
    RestoreInterrupted,
    check_eviction,
    restore_dedupe,
    restore_needed,
)
from exchange.observability import record
from exchange.routing.caps import CapStore
from exchange.routing.geo import warm as warm_geo
from exchange.routing.health import BuyerHealth
from exchange.settings import AppSettings
from exchange.store.db import create_pool, migrate
from exchange.store.redis_lane import lane_client
from exchange.transport import Transport

log = logging.getLogger(__name__)


class ReloadError(Exception):
    """The new config could not be published to the other workers."""


@dataclass
class Runtime:
    settings: AppSettings
    catalog: Catalog
    pool: asyncpg.Pool
    redis: Redis
    transport: Transport
    guard: Guard
    auction: AuctionDeps
    channel: ConfigChannel
    paused: set[str] = field(default_factory=set)
    # The lead path's client (guard, caps, weights): its calls are timed by the lane.
    lane: Redis | None = None
    admission: Admission = field(default_factory=lambda: Admission(64, 100))
    # Per worker: N workers admit up to N times a publisher's rate (the README says so).
    # The asyncio flavour: the threaded MemoryStorage starts a timer *thread* per 10 ms of
    # traffic (~40 a second under load, each contending for the GIL); this one schedules
    # an asyncio task for its expiry instead, far cheaper.
    limiter: SlidingWindowCounterRateLimiter = field(
        default_factory=lambda: SlidingWindowCounterRateLimiter(MemoryStorage())
    )
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _followups: set[asyncio.Future[Any]] = field(default_factory=set)

    @classmethod
    async def open(cls, settings: AppSettings, catalog: Catalog) -> Runtime:
        assert settings.database_url and settings.redis_url, "store URLs must be resolved first"
        if settings.migrate_on_start:
            await migrate(settings.database_url)
        warm_geo()
        pool = await create_pool(
            settings.database_url, min_size=settings.db_pool_min, max_size=settings.db_pool_max
        )
        redis = Redis.from_url(settings.redis_url, max_connections=512)
        lane = lane_client(settings.redis_url)
        transport = Transport(max_answer_bytes=catalog.settings.max_body_bytes)
        await transport.start()
        prefix = settings.redis_prefix
        caps = CapStore(lane, prefix)
        paused: set[str] = set()
        h = catalog.settings.buyer_health
        health = BuyerHealth(
            window=h.window,
            min_samples=h.min_samples,
            fail_ratio=h.fail_ratio,
            probe_every_s=h.probe_every_ms / 1000,
            recover_after=h.recover_after,
        )
        auction = AuctionDeps(transport, caps, lane, prefix, health, paused)
        guard = Guard(lane, prefix, settings.idempotency_days * 86400)
        channel = ConfigChannel(redis, prefix)
        rt = cls(settings, catalog, pool, redis, transport, guard, auction, channel, paused, lane)
        if await caps.is_empty():
            # Redis lost its counters (or never had them): Postgres holds the truth.
            async with pool.acquire() as conn:
                targets = list(catalog.targets.values())
                written = await caps.rebuild(conn, targets, datetime.now(UTC))
            log.info("cap counters rebuilt from Postgres", extra={"keys": written})
        risk = await check_eviction(lane)
        if risk is not None:
            log.warning(risk)
        # Not before the phone and email keys are back: a lead served sooner could be a
        # duplicate sold as new. Later losses (Redis restarted under us) are watched for.
        await rt.restore_redis_if_lost(wait=True)
        await rt.refresh_paused()
        # Start from the files on disk, as of the latest published version.
        catalog.version = await rt.channel.version()
        rt.admission = Admission(
            catalog.settings.max_leads_in_flight,
            catalog.settings.max_loop_lag_ms,
            on_cut=record.admission_cut,
        )
        rt.auction.judge = rt.admission  # its verdict on each lead also spares buyer health
        rt.admission.start()
        rt._tasks.append(asyncio.create_task(rt._follow_others_forever()))
        rt._tasks.append(asyncio.create_task(rt._sample_gauges_forever()))
        rt._tasks.append(asyncio.create_task(rt._watch_redis_forever()))
        return rt

    def background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task the runtime keeps (and cancels at close)."""
        self._tasks.append(asyncio.create_task(coro))

    def after_answer(self, coro: Coroutine[Any, Any, object]) -> None:
        """Run short work that must not delay an answer; ``close`` waits for it."""
        self.track(asyncio.create_task(coro))

    def track(self, task: asyncio.Future[Any]) -> None:
        """Keep a short task that uses the stores; ``close`` waits for it first."""
        self._followups.add(task)
        task.add_done_callback(self._followups.discard)

    def swap_catalog(self, catalog: Catalog) -> None:
        """Leads in flight keep the catalog they started with; new leads see this one."""
        self.catalog = catalog
        self.admission.max_in_flight = catalog.settings.max_leads_in_flight
        self.admission.max_lag_ms = catalog.settings.max_loop_lag_ms
        self.admission.keep_only(catalog.buyers)

    async def reload(self) -> int:
        """Load and validate the config dir, swap it in here, and publish it to the others.

        A bad config raises ConfigError and changes nothing anywhere.
        """
        texts = read_config_texts(self.settings.config_dir)
        catalog = Catalog(load_config_texts(texts))
        try:
            version = await self.channel.publish(texts)
        except (RedisError, OSError) as exc:
            raise ReloadError(f"redis unreachable: {exc}") from exc
        catalog.version = version
        self.swap_catalog(catalog)
        log.info("config reloaded", extra={"version": version, "campaigns": len(catalog.targets)})
        return version

    async def _follow_reloads(self) -> None:
        """Adopt the config another worker published, exactly as it published it."""
        if await self.channel.version() <= self.catalog.version:
            return
        latest = await self.channel.latest()
        if latest is None or latest[0] <= self.catalog.version:
            return
        version, texts = latest
        self.swap_catalog(Catalog(load_config_texts(texts), version))
        log.info("config reloaded (published by another worker)", extra={"version": version})

    async def set_paused(self, campaign_id: str, paused: bool) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(
                """INSERT INTO campaign_state (campaign_id, paused, changed_at, changed_by)
                   VALUES ($1, $2, now(), 'operator')
                   ON CONFLICT (campaign_id)
                   DO UPDATE SET paused = $2, changed_at = now(), changed_by = 'operator'""",
                campaign_id,
                paused,
            )
        if paused:
            self.paused.add(campaign_id)
        else:
            self.paused.discard(campaign_id)

    async def refresh_paused(self) -> None:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch("SELECT campaign_id FROM campaign_state WHERE paused")
        fresh = {r["campaign_id"] for r in rows}
        self.paused.intersection_update(fresh)
        self.paused.update(fresh)

    async def _follow_others_forever(self) -> None:
        # Another worker may pause a campaign or reload the config; this one follows
        # within a second. A config that fails to load keeps the one in use.
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.refresh_paused()
                await self._follow_reloads()
            except (asyncpg.PostgresError, OSError, RedisError, ConfigError):
                log.warning("could not follow other workers", exc_info=True)

    async def _sample_gauges_forever(self, every_s: float = 5.0) -> None:
        # Gauges that would cost a Redis call per lead are sampled here instead.
        while True:
            try:
                targets = self.catalog.targets.values()
                record.throttled(self.catalog.buyers, self.auction.health.throttled())
                await record.sample_caps(self.auction.caps, targets)
            except (RedisError, OSError):
                record.store_error("redis", "sample_caps")
            await asyncio.sleep(every_s)

    async def restore_redis_if_lost(self, *, wait: bool = False) -> None:
        """Put the cap counters and dedupe keys back from Postgres if this Redis lost them
        (intake.restore). With ``wait``, wait out another worker's restore (or one cut
        short by a second loss) instead of leaving it to the next check."""
        lane = self.lane or self.redis
        prefix = self.settings.redis_prefix
        while await restore_needed(lane, prefix):
            now = datetime.now(UTC)
            catalog = self.catalog
            caps = functools.partial(self._raise_caps, list(catalog.targets.values()), now)
            try:
                written = await restore_dedupe(
                    self.pool, lane, self.guard, prefix, catalog.verticals, now, caps=caps
                )
            except RestoreInterrupted:
                if not wait:
                    raise
                written = None
            if written is not None:
                log.info("dedupe keys restored from Postgres", extra={"keys": written})
                return
            if not wait:
                return
            await asyncio.sleep(0.5)

    async def _raise_caps(self, targets: list[Target], now: datetime) -> int:
        # Raised only: under traffic, reservations taken since the loss may count more.
        async with self.pool.acquire() as conn:
            return await self.auction.caps.rebuild(conn, targets, now, only_raise=True)

    async def _watch_redis_forever(self, every_s: float = 5.0) -> None:
        # A Redis restarted under a running exchange comes back empty: within seconds, its
        # cap counters and the phone and email keys of the last dedupe_days are back.
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.restore_redis_if_lost()
            except Exception:  # any failure: log it, look again next time, never stop looking
                log.warning("could not check or restore what Redis lost", exc_info=True)

    async def close(self) -> None:
        self.admission.stop()
        # Leads in flight have finished (the server drained them); what they left running
        # (answers kept for repeats, backstop reads) gets a few seconds, then is cancelled.
        if self._followups:
            _, late = await asyncio.wait(set(self._followups), timeout=5)
            if late:
                log.warning("cancelling unfinished follow-ups", extra={"count": len(late)})
                for task in late:
                    task.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.transport.close()
        await self.redis.aclose()
        if self.lane is not None:
            await self.lane.aclose()
        await self.pool.close()
