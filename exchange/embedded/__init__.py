"""Real Postgres and Redis of our own, for a machine that has neither.

Usage::

    with EmbeddedStores() as urls:      # or: stores = EmbeddedStores(path); urls = stores.start()
        dsn = ensure_database(urls.database_url, "exchange")
        ...                             # asyncpg.connect(dsn), redis.from_url(urls.redis_url)

Both servers live under one data folder (``default_data_dir()`` unless told otherwise):
``pg/`` (the cluster), ``redis/`` (append-only file, pidfile), ``run/`` (sockets), ``logs/``.
Every process that starts on a folder shares the servers already running there; the last
one to stop (explicitly, at exit, on Ctrl-C, SIGTERM or SIGHUP) shuts them down cleanly. An owner
killed with SIGKILL leaves them running: the next start finds no live owner, stops those
leftovers cleanly, and starts afresh.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import platformdirs

from exchange.embedded import _postgres, _redis
from exchange.embedded._system import (
    APP_NAME,
    Account,
    EmbeddedStoreError,
    Layout,
    Owner,
    exclusive,
    grant_traversal,
    log,
    read_owners,
    write_owners,
)

__all__ = [
    "EmbeddedStoreError",
    "EmbeddedStores",
    "StoreUrls",
    "default_data_dir",
    "ensure_database",
    "ensure_database_async",
]


@dataclass(frozen=True)
class StoreUrls:
    """``database_url``: an asyncpg DSN (admin database ``postgres``); ``redis_url``: redis-py."""

    database_url: str
    redis_url: str


def default_data_dir() -> Path:
    """The user's data dir; root gets /var/lib, which the Postgres account can traverse."""
    if os.geteuid() == 0 and sys.platform == "linux" and not os.environ.get("XDG_DATA_HOME"):
        return Path("/var/lib") / APP_NAME
    return platformdirs.user_data_path(APP_NAME, appauthor=False)


class EmbeddedStores:
    """One process's handle on the embedded Postgres and Redis of a data folder."""

    def __init__(self, data_dir: Path | None = None, *, handle_signals: bool = True) -> None:
        self.data_dir = (data_dir or default_data_dir()).expanduser().resolve()
        self._layout = Layout(self.data_dir)
        self._handle_signals = handle_signals
        self._owner: Owner | None = None
        self._urls: StoreUrls | None = None

    @property
    def urls(self) -> StoreUrls | None:
        return self._urls

    def start(self) -> StoreUrls:
        """Start (or join) both servers; idempotent. Without a stop(), exit does it."""
        if self._urls is not None:
            return self._urls
        account = Account.for_postgres()
        self._make_root(account)
        owner = Owner.current()
        with exclusive(self._layout.lock_file):
            others = self._live_owners()
            if not others:
                self._stop_servers(leftover=True)
            try:
                _postgres.start(self._layout, account)
                _redis.start(self._layout)
            except BaseException:
                if not others:
                    self._stop_servers(leftover=False)
                raise
            write_owners(self._layout.owners_file, [*others, owner])
        self._owner = owner
        self._urls = StoreUrls(_postgres.dsn(self._layout), _redis.url(self._layout))
        atexit.register(self.stop)
        _ACTIVE.add(self)
        if self._handle_signals:
            _stop_on_termination()
        shared = f" (shared with {len(others)} other user(s))" if others else ""
        log.info("embedded stores ready in %s%s", self.data_dir, shared)
        return self._urls

    def stop(self) -> None:
        """Leave the servers; the last user stops them. Idempotent."""
        self._leave(lock_timeout=120.0)

    def _leave(self, lock_timeout: float) -> None:
        owner = self._owner
        # A forked child inherits this handle and its atexit hook: only the owner may stop.
        if owner is None or owner.pid != os.getpid():
            return
        atexit.unregister(self.stop)
        _ACTIVE.discard(self)
        with exclusive(self._layout.lock_file, lock_timeout):
            remaining = [o for o in self._live_owners() if o.token != owner.token]
            write_owners(self._layout.owners_file, remaining)
            if remaining:
                log.info(
                    "embedded stores in %s stay up for %d user(s)", self.data_dir, len(remaining)
                )
            else:
                self._stop_servers(leftover=False)
        self._owner = None
        self._urls = None

    def __enter__(self) -> StoreUrls:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _make_root(self, account: Account | None) -> None:
        """The folder itself; with a Postgres account it must be able to walk into it."""
        self.data_dir.mkdir(mode=0o711 if account else 0o700, parents=True, exist_ok=True)
        if account is not None:
            grant_traversal(self.data_dir)

    def _live_owners(self) -> list[Owner]:
        owners = read_owners(self._layout.owners_file)
        live = [o for o in owners if o.alive()]
        if len(live) < len(owners):
            log.info(
                "embedded stores: %d dead user(s) of %s forgotten",
                len(owners) - len(live),
                self.data_dir,
            )
        return live

    def _stop_servers(self, *, leftover: bool) -> None:
        """Both shut down cleanly: Redis flushes its append-only file, Postgres checkpoints."""
        if leftover and (_redis.running(self._layout) or _postgres.running(self._layout)):
            log.warning(
                "embedded stores: servers left by a dead process in %s, restarting them",
                self.data_dir,
            )
        _redis.stop(self._layout)
        _postgres.stop(self._layout)
        if not leftover:
            log.info("embedded stores stopped in %s", self.data_dir)


# Handles started in this process and not stopped yet: what a SIGTERM must stop.
_ACTIVE: set[EmbeddedStores] = set()


def _stop_on_termination() -> None:
    """Stop the stores on SIGTERM/SIGHUP, which would otherwise kill us without atexit.

    Only where Python would die on the spot (default handler, main thread). The process
    still dies by the signal afterwards, as it would have. A framework with handlers of its
    own (uvicorn) exits normally, and atexit stops the stores then.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is signal.SIG_DFL:
            signal.signal(signum, _stop_all_then_die)


def _stop_all_then_die(signum: int, frame: FrameType | None) -> None:
    for stores in list(_ACTIVE):
        try:
            # Bounded: the signal may have interrupted this very thread inside the lock.
            stores._leave(lock_timeout=5.0)
        except Exception:
            log.exception(
                "embedded stores: could not stop %s; the next start will", stores.data_dir
            )
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)


async def ensure_database_async(dsn_admin: str, name: str) -> str:
    """Create database ``name`` unless it exists; return ``dsn_admin`` pointed at it."""
    conn = await asyncpg.connect(dsn_admin)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            quoted = '"' + name.replace('"', '""') + '"'
            try:
                await conn.execute(f"CREATE DATABASE {quoted}")
                log.info("embedded stores: created database %s", name)
            except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
                pass  # another process created it between our check and ours
    finally:
        await conn.close()
    return urlunsplit(urlsplit(dsn_admin)._replace(path="/" + name))


def ensure_database(dsn_admin: str, name: str) -> str:
    """Blocking ``ensure_database_async``; works whether or not an event loop is running here."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, ensure_database_async(dsn_admin, name)).result()
