"""Ping ids: random UUID4s, unique, drawn in one batch per lead."""

from __future__ import annotations

import uuid

from exchange.auction.fanout import PingIds


def test_ping_ids_are_distinct_version_4_uuids_as_hex() -> None:
    ids = PingIds(10)
    drawn = [ids() for _ in range(10)]
    assert len(set(drawn)) == 10
    for value in drawn:
        parsed = uuid.UUID(value)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert parsed.hex == value


def test_more_ids_than_expected_keep_coming_and_stay_unique() -> None:
    ids = PingIds(2)
    drawn = [ids() for _ in range(40)]
    assert len(set(drawn)) == 40
    assert all(uuid.UUID(v).version == 4 for v in drawn)


def test_two_leads_never_share_ids() -> None:
    # Each lead draws its own batch: a buffer shared between instances would repeat ids.
    first, second = PingIds(0), PingIds(0)
    assert {first() for _ in range(5)}.isdisjoint({second() for _ in range(5)})
