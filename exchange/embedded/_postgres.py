"""The embedded Postgres: the binaries that the pgserver package ships.

It listens on a unix socket only (no port to collide with), user ``postgres`` with trust
auth, the socket closed to other users (mode 0700). The postmaster runs in a session of its
own, so a Ctrl-C meant for the exchange does not reach it before we stop it cleanly.
"""

from __future__ import annotations

import importlib.util
import shutil
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import psutil

from exchange.embedded._system import (
    Account,
    EmbeddedStoreError,
    Layout,
    child_exited,
    end_process,
    grant_read_tree,
    grant_traversal,
    log,
    owned_process,
    private_dir,
    spawn,
    tail,
)


def _pgserver_bin() -> Path:
    """pgserver's binaries, found without importing pgserver (its import warns and locks)."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedStoreError("the pgserver package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


PG_BIN = _pgserver_bin()
PG_USER = "postgres"
PG_PORT = 5432  # names the socket file only: nothing listens on TCP
SOCKET_NAME = f".s.PGSQL.{PG_PORT}"


def dsn(layout: Layout, database: str = "postgres") -> str:
    """An asyncpg/libpq DSN that reaches the server through its socket folder."""
    return f"postgresql://{PG_USER}@/{database}?host={quote(str(layout.sockets), safe='/')}"


def running(layout: Layout) -> psutil.Process | None:
    """Our postmaster, if one runs: postmaster.pid's pid, a postgres working in our pgdata."""
    return owned_process(layout.pgdata / "postmaster.pid", "postgres", layout.pgdata)


def start(layout: Layout, account: Account | None) -> None:
    """Create the cluster if needed and start it unless it already runs."""
    _prepare(layout, account)
    if running(layout) is not None:
        return
    # Lock files naming a dead postmaster (or a zombie, or a reused pid) are stale and postgres
    # would refuse them; dropping them is safe once no backend of the dead one touches the data.
    _stop_strays(layout)
    (layout.pgdata / "postmaster.pid").unlink(missing_ok=True)
    (layout.sockets / f"{SOCKET_NAME}.lock").unlink(missing_ok=True)
    (layout.sockets / SOCKET_NAME).unlink(missing_ok=True)
    log_file = layout.logs / "postgres.log"
    log.info("embedded stores: starting Postgres on %s (data %s)", layout.sockets, layout.pgdata)
    command = [str(PG_BIN / "postgres"), "-D", str(layout.pgdata), "-h", "", "-p", str(PG_PORT)]
    command += ["-k", str(layout.sockets), "-c", "unix_socket_permissions=0700"]
    pid = spawn(command, log_file, layout.root, account)
    _wait_ready(layout, pid, log_file, timeout=60.0)


def stop(layout: Layout) -> None:
    """SIGINT is Postgres's fast shutdown: clean, with a checkpoint, no recovery next time."""
    proc = running(layout)
    if proc is None:
        return
    log.info("embedded stores: stopping Postgres (pid %d) in %s", proc.pid, layout.pgdata)
    end_process(proc, "Postgres", signal.SIGINT)


def _stop_strays(layout: Layout) -> None:
    """End backends left by a killed postmaster (they normally exit on their own at once)."""
    pgdata = layout.pgdata.resolve()
    for proc in psutil.process_iter(["name"]):
        try:
            stray = proc.info["name"] == "postgres" and Path(proc.cwd()) == pgdata
            stray = stray and proc.status() != psutil.STATUS_ZOMBIE
        except (OSError, psutil.Error):
            continue
        if stray:
            log.warning("embedded stores: ending stray Postgres process %d in %s", proc.pid, pgdata)
            end_process(proc, "stray Postgres process", signal.SIGQUIT, timeout=5.0)


def _wait_ready(layout: Layout, pid: int, log_file: Path, timeout: float) -> None:
    """What ``pg_ctl -w`` does: wait until postmaster.pid names this pid and says ready."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            lines = (layout.pgdata / "postmaster.pid").read_text().splitlines()
        except OSError:
            lines = []
        if len(lines) >= 8 and lines[0].strip() == str(pid) and lines[7].strip() == "ready":
            return
        if child_exited(pid) or time.monotonic() > deadline:
            state = "exited" if child_exited(pid) else f"not ready after {timeout:.0f} s"
            raise EmbeddedStoreError(f"Postgres {state}\n--- {log_file} ---\n{tail(log_file)}")
        time.sleep(0.05)


def _prepare(layout: Layout, account: Account | None) -> None:
    """Folders with the right owners, and a cluster (created once, atomically)."""
    if account is not None:
        grant_read_tree(PG_BIN.parent)
        grant_traversal(layout.root)
    private_dir(layout.sockets, account)
    private_dir(layout.logs)
    if (layout.pgdata / "PG_VERSION").exists():
        private_dir(layout.pgdata, account)
        return
    if layout.pgdata.exists() and any(layout.pgdata.iterdir()):
        raise EmbeddedStoreError(f"{layout.pgdata} is not empty but holds no Postgres cluster")
    shutil.rmtree(layout.pg_init, ignore_errors=True)
    private_dir(layout.pg_init, account)
    log.info("embedded stores: creating the Postgres cluster in %s", layout.pgdata)
    initdb = ["-D", str(layout.pg_init), "-U", PG_USER, "--auth=trust", "--encoding=UTF8"]
    _run(account, "initdb", [*initdb, "--no-locale", "--no-instructions"], layout.root, 120)
    if layout.pgdata.exists():
        layout.pgdata.rmdir()
    layout.pg_init.rename(layout.pgdata)


def _run(account: Account | None, program: str, args: list[str], cwd: Path, timeout: float) -> None:
    """Run initdb, as the Postgres account when we are root."""
    command = [str(PG_BIN / program), *args]
    try:
        subprocess.run(
            command,
            cwd=cwd,
            check=True,
            capture_output=True,
            timeout=timeout,
            user=account.uid if account else None,
            group=account.gid if account else None,
            extra_groups=[] if account else None,
        )
    except subprocess.CalledProcessError as exc:
        output = (exc.stderr or b"").decode(errors="replace").strip()
        raise EmbeddedStoreError(f"{program} failed ({exc.returncode}): {output}") from exc
    except subprocess.TimeoutExpired as exc:
        raise EmbeddedStoreError(f"{program} did not finish in {timeout:.0f} s") from exc
