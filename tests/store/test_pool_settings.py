"""The Postgres pool is open before the first lead, and its bounds are checked at start."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from exchange.settings import AppSettings
from tests.kit.exchange import make_config, start_exchange


async def test_the_pool_is_open_at_its_minimum_before_the_first_lead(
    pg_dsn: str, redis_url: str, redis_prefix: str
) -> None:
    # A burst on a fresh worker must not wait for connections to be made one by one.
    ex = await start_exchange(make_config([]), pg_dsn, redis_url, redis_prefix)
    try:
        pool = ex.runtime.pool
        assert AppSettings().db_pool_min == 8
        assert pool.get_size() == 8
        assert pool.get_idle_size() == 8
    finally:
        await ex.close()


def test_a_minimum_above_the_maximum_is_refused_naming_both() -> None:
    with pytest.raises(
        ValidationError, match=r"db_pool_min \(30\) must not exceed db_pool_max \(20\)"
    ):
        AppSettings(db_pool_min=30)
