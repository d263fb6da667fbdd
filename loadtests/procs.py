"""Run the load tools (and the exchange) as subprocesses: each gets its own core and loop.

Usage::

    fleet = start_module("loadtests.fleet", ["--buyers", "10", "--port", "9100"])
    print(fleet.ready["buyers"]["b01"]["ping_url"])   # the JSON line it printed when up
    exchange = start_command(["exchange", "serve", "--port", "8000"], ready_url=".../healthz")
    ...
    exchange.stop(); fleet.stop()

These calls block; from async code wrap them in ``asyncio.to_thread`` so an in-process
server keeps answering meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import orjson


class StartError(RuntimeError):
    """A subprocess died or never became ready; the message ends with its stderr."""


@dataclass
class Proc:
    """A started subprocess and the ready line it printed (empty when it prints none)."""

    popen: subprocess.Popen[bytes]
    stderr: IO[bytes]
    ready: dict[str, Any] = field(default_factory=dict)

    def stderr_tail(self, limit: int = 4000) -> str:
        self.stderr.flush()
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")[-limit:]

    def stop(self, timeout_s: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout_s``; returns the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        self.stderr.close()
        return self.popen.returncode


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now (the OS may hand it out again later; use it at once)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def start_module(
    module: str,
    args: Sequence[str],
    *,
    ready_timeout_s: float = 20.0,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> Proc:
    """Start ``python -m module args`` and wait for its one-line JSON ready message."""
    proc = _spawn([sys.executable, "-m", module, *args], env, cwd)
    try:
        proc.ready = _read_ready_line(proc, ready_timeout_s)
    except BaseException:
        proc.stop(1.0)
        raise
    return proc


def start_command(
    argv: Sequence[str],
    *,
    ready_url: str,
    ready_timeout_s: float = 60.0,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> Proc:
    """Start any command (e.g. ``exchange serve``) and wait until ``ready_url`` answers 2xx."""
    proc = _spawn(list(argv), env, cwd)
    try:
        wait_http(ready_url, ready_timeout_s, proc)
    except BaseException:
        proc.stop(1.0)
        raise
    return proc


def wait_http(url: str, timeout_s: float = 30.0, proc: Proc | None = None) -> None:
    """Poll ``url`` until it answers 2xx; fail early when ``proc`` exits meanwhile."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise StartError(f"exited with {proc.popen.returncode}:\n{proc.stderr_tail()}")
        with (
            contextlib.suppress(urllib.error.URLError, OSError),
            urllib.request.urlopen(url, timeout=1.0) as resp,
        ):
            if 200 <= resp.status < 300:
                return
        time.sleep(0.1)
    tail = proc.stderr_tail() if proc is not None else ""
    raise StartError(f"{url} not ready after {timeout_s} s\n{tail}")


def _spawn(argv: list[str], env: Mapping[str, str] | None, cwd: str | None) -> Proc:
    # stderr goes to a temp file: a pipe nobody reads would block the child once full.
    stderr = tempfile.TemporaryFile()  # noqa: SIM115 - Proc.stop closes it
    popen = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )
    return Proc(popen, stderr)


def _read_ready_line(proc: Proc, timeout_s: float) -> dict[str, Any]:
    assert proc.popen.stdout is not None
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as sel:
        sel.register(proc.popen.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if sel.select(timeout=0.1):
                line = proc.popen.stdout.readline()
                if not line:
                    raise StartError(f"exited before ready:\n{proc.stderr_tail()}")
                with contextlib.suppress(orjson.JSONDecodeError):
                    ready = orjson.loads(line)
                    if isinstance(ready, dict) and ready.get("ready"):
                        return ready
            elif proc.popen.poll() is not None:
                raise StartError(f"exited with {proc.popen.returncode}:\n{proc.stderr_tail()}")
    raise StartError(f"no ready line after {timeout_s} s\n{proc.stderr_tail()}")
