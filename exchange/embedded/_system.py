"""Plumbing shared by the embedded servers: the data folder, its lock, its users, processes.

A data folder holds one Postgres and one Redis. Every process using them is listed in
``owners.json`` (pid + start time, so a reused pid is not mistaken for a live owner); the
folder's ``.lock`` (flock, dropped by the kernel even on SIGKILL) serializes start and stop.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import pwd
import signal
import stat
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

log = logging.getLogger("exchange.embedded")

APP_NAME = "ping-post-exchange"
PG_ACCOUNT = "pgserver"  # the same system user pgserver itself creates when run as root
# sun_path holds 104 (macOS) to 108 (Linux) bytes with its NUL; keep a margin.
_SOCKET_PATH_MAX = 100
_LONGEST_SOCKET_NAME = ".s.PGSQL.5432"


class EmbeddedStoreError(RuntimeError):
    """An embedded server could not be prepared, started or stopped."""


@dataclass(frozen=True)
class Layout:
    """Where everything lives inside one data folder."""

    root: Path

    @property
    def pgdata(self) -> Path:
        return self.root / "pg"

    @property
    def pg_init(self) -> Path:
        """initdb writes here first, then renames: a killed initdb never leaves a half cluster."""
        return self.root / "pg.init"

    @property
    def redis_dir(self) -> Path:
        return self.root / "redis"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    @property
    def owners_file(self) -> Path:
        return self.root / "owners.json"

    @property
    def sockets(self) -> Path:
        """Unix sockets of both servers; a short temp folder when the data path is too long."""
        local = self.root / "run"
        if len(os.fsencode(local / _LONGEST_SOCKET_NAME)) <= _SOCKET_PATH_MAX:
            return local
        digest = hashlib.sha256(os.fsencode(self.root)).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"{APP_NAME}-{digest}"


@dataclass(frozen=True)
class Account:
    """The system user Postgres runs as when we are root (initdb and postgres refuse root)."""

    name: str
    uid: int
    gid: int

    @classmethod
    def for_postgres(cls) -> Account | None:
        if os.geteuid() != 0:
            return None
        try:
            entry = pwd.getpwnam(PG_ACCOUNT)
        except KeyError:
            log.info("embedded stores: creating system user %s to run Postgres", PG_ACCOUNT)
            _create_system_user(PG_ACCOUNT)
            entry = pwd.getpwnam(PG_ACCOUNT)
        return cls(PG_ACCOUNT, entry.pw_uid, entry.pw_gid)


def _create_system_user(name: str) -> None:
    args = ["useradd", "--system", "--user-group", "--no-create-home"]
    args += ["--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name]
    try:
        subprocess.run(args, check=True, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise EmbeddedStoreError(f"cannot create system user {name!r}: {detail}") from exc


def private_dir(path: Path, account: Account | None = None) -> None:
    """Create ``path`` mode 0700, owned by ``account`` when given (else by us).

    An existing folder owned by a stranger is refused: in a shared temp dir it could be a trap.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    owner = path.stat().st_uid
    if owner not in {os.geteuid(), account.uid if account else os.geteuid()}:
        raise EmbeddedStoreError(f"{path} belongs to uid {owner}, not to us: refusing to use it")
    if account is not None:
        os.chown(path, account.uid, account.gid)
    path.chmod(0o700)


def grant_traversal(path: Path) -> None:
    """Add o+x to ``path`` and each parent lacking it, so the Postgres account can reach it."""
    for folder in [path, *path.parents]:
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            log.warning("embedded stores: adding o+x to %s so Postgres can reach %s", folder, path)
            folder.chmod(mode | stat.S_IXOTH)


def grant_read_tree(root: Path) -> None:
    """Make an installed tree readable (and its programs runnable) by other users."""
    grant_traversal(root)
    for folder, _dirs, files in os.walk(root):
        _add_mode(Path(folder), stat.S_IROTH | stat.S_IXOTH)
        for name in files:
            file = Path(folder) / name
            exec_bit = stat.S_IXOTH if file.stat().st_mode & stat.S_IXUSR else 0
            _add_mode(file, stat.S_IROTH | exec_bit)


def _add_mode(path: Path, bits: int) -> None:
    mode = path.lstat().st_mode
    if (stat.S_ISREG(mode) or stat.S_ISDIR(mode)) and mode & bits != bits:
        path.chmod(mode | bits)


def rotate_log(path: Path, max_bytes: int = 10 * 2**20) -> None:
    """Keep one previous log: the servers append forever otherwise."""
    with suppress(FileNotFoundError):
        if path.stat().st_size > max_bytes:
            path.replace(path.with_name(path.name + ".1"))


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextmanager
def exclusive(lock_file: Path, timeout: float = 120.0) -> Iterator[None]:
    """Hold the data folder's lock; other processes (and threads) wait their turn."""
    deadline = time.monotonic() + timeout
    if not _THREAD_LOCK.acquire(timeout=timeout):
        raise EmbeddedStoreError(f"{lock_file} stayed locked in this process for {timeout:.0f} s")
    try:
        with open(lock_file, "a+b") as handle:
            _flock(handle.fileno(), lock_file, deadline)
            yield
    finally:
        _THREAD_LOCK.release()


def _flock(fd: int, lock_file: Path, deadline: float) -> None:
    waiting_logged = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() > deadline:
            raise EmbeddedStoreError(f"{lock_file} stayed locked by another process")
        if not waiting_logged:
            log.info("embedded stores: waiting for another process on %s", lock_file.parent)
            waiting_logged = True
        time.sleep(0.1)


# Held with the flock: two fds of one process would block each other on flock.
_THREAD_LOCK = threading.Lock()


@dataclass(frozen=True)
class Owner:
    """One user of a data folder: a process (pid + start time) and a handle within it."""

    pid: int
    started: float
    token: str

    @classmethod
    def current(cls) -> Owner:
        return cls(os.getpid(), psutil.Process().create_time(), uuid.uuid4().hex)

    def alive(self) -> bool:
        try:
            proc = psutil.Process(self.pid)
            same = abs(proc.create_time() - self.started) < 0.05
            return same and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False


def read_owners(path: Path) -> list[Owner]:
    try:
        raw = json.loads(path.read_text())
        return [Owner(int(o["pid"]), float(o["started"]), str(o["token"])) for o in raw]
    except FileNotFoundError:
        return []
    except (ValueError, TypeError, KeyError):
        log.warning("embedded stores: unreadable %s, treating it as empty", path)
        return []


def write_owners(path: Path, owners: list[Owner]) -> None:
    """Replace the list atomically: a crash mid-write must not lose the other owners."""
    scratch = path.with_name(path.name + ".tmp")
    scratch.write_text(json.dumps([asdict(o) for o in owners]))
    scratch.replace(path)


def owned_process(pidfile: Path, name: str, cwd: Path) -> psutil.Process | None:
    """The live process named in ``pidfile`` if it is a ``name`` working in ``cwd``.

    Both servers chdir into their own folder, so this tells our server from a reused pid.
    """
    try:
        pid = int(pidfile.read_text().split("\n", 1)[0].strip())
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE or proc.name() != name:
            return None
        return proc if Path(proc.cwd()) == cwd.resolve() else None
    except (OSError, ValueError, psutil.Error):
        return None


def spawn(command: list[str], log_file: Path, cwd: Path, account: Account | None = None) -> int:
    """Start a server as our child, in a session of its own (Ctrl-C reaches only us).

    A child rather than a daemon: whoever started it reaps it when stopping it, instead of
    leaving a zombie to an init that may not reap orphans.
    """
    rotate_log(log_file)
    with open(log_file, "ab") as output:
        popen = subprocess.Popen(
            command,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            user=account.uid if account else None,
            group=account.gid if account else None,
            extra_groups=[] if account else None,
        )
    _CHILDREN[popen.pid] = popen
    return popen.pid


# Our server children, kept so they are waited for (reaped) and never garbage-collected.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def child_exited(pid: int) -> bool:
    """True if ``pid`` is a server child of ours that has already exited."""
    popen = _CHILDREN.get(pid)
    return popen is not None and popen.poll() is not None


def is_gone(proc: psutil.Process) -> bool:
    """Exited, or a zombie (an orphan's zombie waits for an init that may never reap it)."""
    popen = _CHILDREN.get(proc.pid)
    if popen is not None:
        if popen.poll() is None:
            return False
        del _CHILDREN[proc.pid]
        return True
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def wait_gone(proc: psutil.Process, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not is_gone(proc):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def end_process(
    proc: psutil.Process, what: str, sig: int = signal.SIGTERM, timeout: float = 30.0
) -> None:
    """Send the server's clean-shutdown signal; SIGKILL only if it outlives ``timeout``."""
    with suppress(psutil.Error):
        proc.send_signal(sig)
    if wait_gone(proc, timeout):
        return
    log.warning(
        "embedded stores: %s (pid %d) ignored its shutdown signal, killing it", what, proc.pid
    )
    with suppress(psutil.Error):
        proc.kill()
    if not wait_gone(proc, 5.0):
        raise EmbeddedStoreError(f"{what} (pid {proc.pid}) survived SIGKILL")
