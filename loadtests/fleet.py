"""A simulated buyer fleet: many buyers of the native protocol (SPEC §4) in one process.

URL layout. Every buyer answers ``POST http://HOST:PORT/<buyer_id>/ping`` and ``…/post``
on its listener. Buyers without a port of their own share the fleet's port; a buyer with
its own port also answers its ``ping_path`` / ``post_path`` (``/ping``, ``/post`` from a
config's URLs). Every listener serves ``GET /_stats`` (the whole fleet's counters as JSON)
and ``POST /_reset`` (zero them between benchmark runs).

Usage::

    fleet = await start_fleet([BuyerSpec("acme", secret="s"), BuyerSpec("slow", mode="slow")])
    ping_url = fleet.url_for("acme") + "/ping"
    ...
    print(fleet.stats()["acme"].bids)
    await fleet.close()

CLI: ``python -m loadtests.fleet --buyers 10 --latency-ms 0 --port 9100`` (buyers
``b01``… on ports 9100…; ``--shared-port`` puts them all on 9100) or
``python -m loadtests.fleet --from-config config`` (each buyer on its configured
``ping_url``/``post_url``). Once up it prints one JSON line with every buyer's URLs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import random
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import orjson
from aiohttp import web

from loadtests.buyer import MODES, BuyerSpec, BuyerStats, Latency, Mode, SimBuyer
from loadtests.config import Endpoint, buyers_from_config

_IN_TIME_MODES = ("normal", "flaky", "slow")
_COUNTERS = [f.name for f in fields(BuyerStats)]
CONFIG_DEFAULT_LATENCY = Latency.uniform(20, 80)


@dataclass(frozen=True)
class FleetSpec:
    """The fleet: its buyers and the shared listener for buyers without a port of their own."""

    buyers: Sequence[BuyerSpec]
    host: str = "127.0.0.1"
    port: int = 0  # 0 = any free port
    seed: int | None = None  # seeds each buyer's bids and latencies, for repeatable runs


@dataclass
class _Listener:
    host: str
    port: int
    buyers: dict[str, SimBuyer] = field(default_factory=dict)


class Fleet:
    """A running fleet. Build it with :func:`start_fleet`; close it with :meth:`close`."""

    def __init__(self, buyers: dict[str, SimBuyer], closing: asyncio.Event) -> None:
        self._buyers = buyers
        self._homes: dict[str, str] = {}  # buyer_id -> "http://host:port", set once bound
        self._closing = closing
        self._runners: list[web.AppRunner] = []

    def url_for(self, buyer_id: str) -> str:
        """The buyer's base URL; its ping is at ``+ "/ping"``, its post at ``+ "/post"``."""
        return f"{self._homes[buyer_id]}/{buyer_id}"

    def ping_url(self, buyer_id: str) -> str:
        path = self._buyers[buyer_id].spec.ping_path
        return self._homes[buyer_id] + path if path else self.url_for(buyer_id) + "/ping"

    def post_url(self, buyer_id: str) -> str:
        path = self._buyers[buyer_id].spec.post_path
        return self._homes[buyer_id] + path if path else self.url_for(buyer_id) + "/post"

    @property
    def buyer_ids(self) -> list[str]:
        return list(self._buyers)

    @property
    def stats_url(self) -> str:
        return next(iter(self._homes.values())) + "/_stats"

    def stats(self) -> dict[str, BuyerStats]:
        return {buyer_id: b.stats for buyer_id, b in self._buyers.items()}

    def stats_json(self) -> dict[str, Any]:
        """What ``GET /_stats`` answers: per buyer counters and their totals."""
        stats = self.stats()
        totals: dict[str, Any] = {
            name: sum(getattr(s, name) for s in stats.values()) for name in _COUNTERS
        }
        totals["pii_in_ping"] = totals["pii_pings"] > 0
        return {"buyers": {k: s.to_dict() for k, s in stats.items()}, "totals": totals}

    def reset_stats(self) -> None:
        for buyer in self._buyers.values():
            buyer.reset_stats()

    def describe(self) -> dict[str, Any]:
        """Every buyer's URLs and mode: the line the CLI prints once it is up."""
        return {
            "stats_url": self.stats_url,
            "max_in_time_latency_ms": self.max_in_time_latency_ms(),
            "buyers": {
                buyer_id: {
                    "ping_url": None if _post_only(b.spec) else self.ping_url(buyer_id),
                    "post_url": self.post_url(buyer_id),
                    "mode": b.spec.mode,
                    "timeout_ms": b.spec.timeout_ms,
                }
                for buyer_id, b in self._buyers.items()
            },
        }

    def max_in_time_latency_ms(self) -> float:
        """The slowest answer a buyer can give within its timeout: the generator's reference."""
        return max(
            (
                min(b.spec.latency.upper_ms(), b.spec.timeout_ms)
                for b in self._buyers.values()
                if b.spec.mode in _IN_TIME_MODES
                and not (b.spec.mode == "slow" and b.spec.late_rate >= 1)
            ),
            default=0.0,
        )

    async def _serve(self, listener: _Listener, port: int) -> None:
        """Bind ``port`` (0 = any free one) and serve the listener's buyers on it."""
        app = web.Application()
        _add_routes(app, self, listener, port)
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await runner.setup()
        self._runners.append(runner)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((listener.host, port))
        except OSError:
            sock.close()
            raise
        # A deep backlog: a burst of new connections from the exchange must not be dropped.
        await web.SockSite(runner, sock, backlog=4096).start()
        listener.port = sock.getsockname()[1]
        for buyer_id in listener.buyers:
            self._homes[buyer_id] = f"http://{listener.host}:{listener.port}"

    async def close(self) -> None:
        self._closing.set()
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()

    async def __aenter__(self) -> Fleet:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def start_fleet(specs: FleetSpec | Sequence[BuyerSpec], host: str = "127.0.0.1") -> Fleet:
    """Start every buyer of ``specs`` on its listener(s) and return the running fleet."""
    fleet_spec = specs if isinstance(specs, FleetSpec) else FleetSpec(list(specs), host=host)
    closing = asyncio.Event()
    seeder = random.Random(fleet_spec.seed)
    listeners: dict[tuple[str, int | str], _Listener] = {}
    buyers: dict[str, SimBuyer] = {}
    for spec in fleet_spec.buyers:
        if spec.buyer_id in buyers:
            raise ValueError(f"buyer {spec.buyer_id!r} appears twice")
        buyer = SimBuyer(spec, random.Random(seeder.getrandbits(64)), closing)
        buyers[spec.buyer_id] = buyer
        key = _listener_key(spec, fleet_spec)
        listener = listeners.setdefault(key, _Listener(str(key[0]), 0))
        listener.buyers[spec.buyer_id] = buyer
    fleet = Fleet(buyers, closing)
    try:
        for key, listener in listeners.items():
            port = key[1] if isinstance(key[1], int) else 0
            await fleet._serve(listener, port)
    except BaseException:
        await fleet.close()
        raise
    return fleet


def _listener_key(spec: BuyerSpec, fleet_spec: FleetSpec) -> tuple[str, int | str]:
    host = spec.host or fleet_spec.host
    if spec.port is None:
        return (host, fleet_spec.port)
    # Port 0 asks for a free port of the buyer's own, so it must not merge with others.
    return (host, spec.port if spec.port else f"own:{spec.buyer_id}")


def _add_routes(app: web.Application, fleet: Fleet, listener: _Listener, port: int) -> None:
    taken: set[str] = set()
    for buyer in listener.buyers.values():
        for path, handler in (
            (buyer.spec.ping_path, buyer.handle_ping),
            (buyer.spec.post_path, buyer.handle_post),
        ):
            if path is None:
                continue
            if path in taken:
                raise ValueError(f"{listener.host}:{port}{path} is served twice")
            taken.add(path)
            app.router.add_post(path, handler)

    async def by_id(request: web.Request) -> web.StreamResponse:
        buyer = listener.buyers.get(request.match_info["buyer_id"])
        if buyer is None:
            raise web.HTTPNotFound()
        kind = request.match_info["kind"]
        return await (buyer.handle_ping(request) if kind == "ping" else buyer.handle_post(request))

    async def stats(_: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(fleet.stats_json()), content_type="application/json")

    async def reset(_: web.Request) -> web.Response:
        fleet.reset_stats()
        return web.Response(status=204)

    app.router.add_post("/{buyer_id}/{kind:ping|post}", by_id)
    app.router.add_get("/_stats", stats)
    app.router.add_post("/_reset", reset)


def _post_only(spec: BuyerSpec) -> bool:
    """A config buyer with a post_url but no ping_url: the exchange never pings it."""
    return spec.post_path is not None and spec.ping_path is None


def mode_for(buyer_id: str) -> tuple[Mode, dict[str, Any]]:
    """The behaviour a config buyer gets from its id: slow*, flaky*, picky*, hang*, else normal."""
    if buyer_id.startswith("slow"):
        return "slow", {"late_rate": 0.7}  # "often late": some answers still make the deadline
    if buyer_id.startswith("flaky"):
        return "flaky", {"error_rate": 0.3}
    if buyer_id.startswith("picky"):
        return "normal", {"reject_rate": 0.6}
    if buyer_id.startswith("hang"):
        return "hang", {}
    return "normal", {}


def specs_from_config(
    config_dir: Path | str, latency: Latency = CONFIG_DEFAULT_LATENCY, bid_probability: float = 0.9
) -> list[BuyerSpec]:
    """One buyer per config buyer, on its ``ping_url``/``post_url`` host:port and paths."""
    specs = []
    for buyer in buyers_from_config(config_dir):
        urls = [Endpoint.parse(u) for u in (buyer.ping_url, buyer.post_url) if u]
        if not urls:
            continue
        if len({(e.host, e.port) for e in urls}) > 1:
            raise ValueError(f"buyer {buyer.buyer_id}: ping_url and post_url must share host:port")
        mode, extra = mode_for(buyer.buyer_id)
        ping = Endpoint.parse(buyer.ping_url) if buyer.ping_url else None
        post = Endpoint.parse(buyer.post_url) if buyer.post_url else None
        spec = BuyerSpec(
            buyer.buyer_id,
            secret=buyer.secret,
            mode=mode,
            bid_probability=bid_probability,
            latency=latency,
            timeout_ms=buyer.timeout_ms,
            host=urls[0].host,
            port=urls[0].port,
            ping_path=ping.path if ping else None,
            post_path=post.path if post else None,
        )
        specs.append(replace(spec, **extra))
    return specs


def specs_from_args(args: argparse.Namespace) -> list[BuyerSpec]:
    """The CLI's synthetic fleet: ``--buyers`` normal buyers, the last ones per ``--mix``."""
    modes: list[Mode] = []
    for item in filter(None, args.mix.split(",")):
        name, _, count = item.partition("=")
        if name not in MODES:
            raise SystemExit(f"--mix: unknown mode {name!r}; modes are {', '.join(MODES)}")
        modes += [cast(Mode, name)] * int(count or 1)
    normal: list[Mode] = ["normal"] * max(args.buyers - len(modes), 0)
    modes = normal + modes
    return [
        BuyerSpec(
            f"{args.prefix}{i + 1:02d}",
            secret=args.secret,
            mode=mode,
            bid_probability=args.bid_probability,
            latency=Latency.parse(args.latency),
            reject_rate=args.reject_rate,
            timeout_ms=args.timeout_ms,
            port=None if args.shared_port else args.port + i,
        )
        for i, mode in enumerate(modes)
    ]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.fleet", description=__doc__.split("\n")[0]
    )
    p.add_argument("--from-config", type=Path, help="serve the buyers of this exchange config dir")
    p.add_argument("--buyers", type=int, default=10)
    p.add_argument("--prefix", default="b", help="buyer ids are PREFIX01, PREFIX02, …")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9100, help="first buyer's port (or the shared one)")
    p.add_argument("--shared-port", action="store_true", help="all buyers on --port, by path")
    p.add_argument("--latency-ms", type=float, help="fixed ping latency (same as --latency MS)")
    p.add_argument("--latency", help='"20" fixed, "20-50" uniform, "ln:40:0.5:250" lognormal')
    p.add_argument("--bid-probability", type=float, default=0.9)
    p.add_argument("--reject-rate", type=float, default=0.0)
    p.add_argument("--timeout-ms", type=int, default=250)
    p.add_argument("--secret", help="verify signatures with this secret")
    p.add_argument("--mix", default="", help='misbehaving buyers, e.g. "hang=1,slow=2,flaky"')
    p.add_argument("--seed", type=int)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.latency is None:
        args.latency = str(args.latency_ms) if args.latency_ms is not None else None
    if args.from_config:
        latency = Latency.parse(args.latency) if args.latency else CONFIG_DEFAULT_LATENCY
        specs = specs_from_config(args.from_config, latency, args.bid_probability)
    else:
        args.latency = args.latency or "0"
        specs = specs_from_args(args)
    fleet_spec = FleetSpec(specs, host=args.host, port=args.port, seed=args.seed)
    _run(fleet_spec)


def _run(fleet_spec: FleetSpec) -> None:
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        runner.run(_serve_forever(fleet_spec))


async def _serve_forever(fleet_spec: FleetSpec) -> None:
    fleet = await start_fleet(fleet_spec)
    # As in the baseline and the generator: a simulated buyer's own collector pauses
    # (10 ms gen-2 passes were measured here) would land on the exchange's overhead.
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sys.stdout.write(orjson.dumps({"ready": True, **fleet.describe()}).decode() + "\n")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await fleet.close()


if __name__ == "__main__":
    main()
