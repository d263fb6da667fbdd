"""US zip codes in memory: state and coordinates per 5-digit zip, for radius filters and intake.

The data ships inside the ``zipcodes`` package. Its per-call lookups scan the whole table, so
the table is read once into plain dicts; call :func:`warm` at start-up so that the first lead
does not pay for it (about half a second on the reference machine).

    >>> _ = warm()
    >>> distance_miles("94105", "10001")  # doctest: +ELLIPSIS
    2562.0...
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zipcodes

# Coordinates with both parts within this many degrees of zero are the package's placeholder
# for "unknown" (APO/FPO and some PO-box zips), not a point in the Gulf of Guinea.
_NO_COORDINATE = 1.0


@dataclass(frozen=True, slots=True)
class _ZipTable:
    states: dict[str, str]
    coordinates: dict[str, tuple[float, float]]


# The package's functions carry no annotations; these state what they take and return.
_similar_to: Callable[[str], list[dict[str, Any]]] = zipcodes.similar_to
_haversine: Callable[[float, float, float, float], float] = zipcodes.haversine

_table: _ZipTable | None = None
_lock = threading.Lock()


def warm() -> float:
    """Load the zip table now; returns the seconds it took (0.0 when it was already loaded)."""
    if _table is not None:
        return 0.0
    started = time.perf_counter()
    _zip_table()
    return time.perf_counter() - started


def known_zip(zip5: str) -> bool:
    """True for a 5-digit zip the US Postal Service has issued (retired ones included)."""
    return zip5 in _zip_table().states


def zip_state(zip5: str) -> str | None:
    """The state (or territory, or AA/AE/AP for military mail) that a zip belongs to."""
    return _zip_table().states.get(zip5)


def coordinates(zip5: str) -> tuple[float, float] | None:
    """(latitude, longitude) of the zip's centre, or None when unknown."""
    return _zip_table().coordinates.get(zip5)


def distance_miles(zip_a: str, zip_b: str) -> float | None:
    """Great-circle miles between two zips' centres; None if either has no known location."""
    table = _zip_table().coordinates
    a = table.get(zip_a)
    b = table.get(zip_b)
    if a is None or b is None:
        return None
    return haversine_miles(a, b)


def haversine_miles(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle miles between two (latitude, longitude) points in degrees."""
    return float(_haversine(a[1], a[0], b[1], b[0]))


def _zip_table() -> _ZipTable:
    global _table
    table = _table
    if table is not None:
        return table
    with _lock:
        if _table is None:
            _table = _load()
        return _table


def _load() -> _ZipTable:
    states: dict[str, str] = {}
    coords: dict[str, tuple[float, float]] = {}
    # One leading digit at a time: the package builds a dict per zip, and taking all 42k at
    # once (list_all) would also keep them cached in the package for the life of the process.
    for digit in "0123456789":
        for row in _similar_to(digit):
            code = str(row["zip_code"])
            states[code] = sys.intern(str(row["state"]))
            point = _point(row.get("lat"), row.get("long"))
            if point is not None:
                coords[code] = point
    return _ZipTable(states, coords)


def _point(lat: object, lon: object) -> tuple[float, float] | None:
    try:
        point = (float(str(lat)), float(str(lon)))
    except ValueError:
        return None
    if abs(point[0]) < _NO_COORDINATE and abs(point[1]) < _NO_COORDINATE:
        return None
    return point
