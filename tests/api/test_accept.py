"""The accept-all listener: a busy worker sees every queued connection at its next wake."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import uvicorn
import uvloop
from starlette.types import Receive, Scope, Send

from exchange.api.accept import MAX_ACCEPTS_PER_WAKE, Listener, Loop, new_event_loop

QUEUED = 40
QUEUED_MANY = 100  # more than one wake's batch


class _Counting(asyncio.Protocol):
    def __init__(self, made: list[int], iteration: Callable[[], int]) -> None:
        self.made = made
        self.iteration = iteration

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made.append(self.iteration())


async def _iterations_to_accept(queued: int) -> tuple[int, type[asyncio.AbstractServer]]:
    """Queue ``queued`` connections in the kernel, then count loop turns until all are made."""
    loop = asyncio.get_running_loop()
    turns = 0

    def tick() -> None:
        nonlocal turns
        turns += 1
        loop.call_soon(tick)

    made: list[int] = []
    server = await loop.create_server(
        lambda: _Counting(made, lambda: turns), "127.0.0.1", 0, backlog=256
    )
    port = server.sockets[0].getsockname()[1]
    # Blocking connects finish in the kernel's accept queue while the loop is held here.
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(queued)]
    loop.call_soon(tick)
    deadline = time.monotonic() + 5
    while len(made) < queued and time.monotonic() < deadline:
        await asyncio.sleep(0)
    for client in clients:
        client.close()
    server.close()
    await server.wait_closed()
    assert len(made) == queued
    return max(made), type(server)


def test_the_listener_accepts_the_whole_queue_within_a_few_turns() -> None:
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        turns, kind = runner.run(_iterations_to_accept(QUEUED))
    assert kind is Listener
    assert turns <= 4, f"{QUEUED} queued connections took {turns} loop turns"


def test_stock_uvloop_takes_one_connection_per_turn() -> None:
    """Why the listener exists: if libuv ever drains the queue itself, drop the listener."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        turns, kind = runner.run(_iterations_to_accept(QUEUED))
    assert kind is not Listener
    assert turns >= QUEUED // 2


def test_a_wake_takes_at_most_a_batch_so_workers_sharing_a_socket_stay_fair() -> None:
    async def scenario() -> list[int]:
        loop = asyncio.get_running_loop()
        batches: list[int] = []
        made = 0

        class Proto(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                nonlocal made
                made += 1

        server = await loop.create_server(Proto, "127.0.0.1", 0, backlog=512)
        assert isinstance(server, Listener)
        sock = server.sockets[0]
        port = sock.getsockname()[1]
        # Under the smallest common somaxconn (128), so no connect waits on a full queue.
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(QUEUED_MANY)]
        original = server._accept

        def counted(s: socket.socket) -> None:
            before = len(server._handshakes)
            original(s)
            batches.append(len(server._handshakes) - before)

        loop.remove_reader(sock.fileno())
        loop.add_reader(sock.fileno(), counted, sock)
        deadline = time.monotonic() + 5
        while made < QUEUED_MANY and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        for client in clients:
            client.close()
        server.close()
        await server.wait_closed()
        return batches

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        batches = runner.run(scenario())
    assert sum(batches) == QUEUED_MANY
    assert max(batches) == MAX_ACCEPTS_PER_WAKE


def test_after_close_nothing_is_accepted() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        assert isinstance(server, Listener)
        port = server.sockets[0].getsockname()[1]
        assert server.is_serving()
        server.close()
        await asyncio.wait_for(server.wait_closed(), 1)
        assert not server.is_serving()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1)

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(scenario())


def test_unix_socket_servers_stay_uvloops_own(tmp_path: Path) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, Loop)
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        unix.bind(str(tmp_path / "s.sock"))
        server = await loop.create_server(asyncio.Protocol, sock=unix)
        assert not isinstance(server, Listener)
        server.close()
        await server.wait_closed()

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(scenario())


async def _hello(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


def test_uvicorn_serves_through_the_listener() -> None:
    """What ``exchange serve`` runs: uvicorn with this module as its custom loop factory."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(
        _hello,
        host="127.0.0.1",
        port=port,
        loop="exchange.api.accept:new_event_loop",
        log_config=None,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.started
        assert all(isinstance(s, Listener) for s in server.servers)
        with httpx.Client() as client:
            answers = [client.get(f"http://127.0.0.1:{port}/").text for _ in range(3)]
        assert answers == ["hello"] * 3
    finally:
        server.should_exit = True
        thread.join(10)
    assert not thread.is_alive()


_FD_STARVED_SERVER = """
import asyncio, os, resource, sys, time
from exchange.api.accept import new_event_loop

class Keep(asyncio.Protocol):
    made = 0
    def connection_made(self, transport):
        Keep.made += 1
        transport.write(b"hi")  # tell the client it was accepted

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Keep, "127.0.0.1", 0, backlog=128)
    open_now = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (open_now + 6, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    print(server.sockets[0].getsockname()[1], flush=True)
    started = time.process_time()
    for _ in range(1200):  # a minute at most; the test kills it long before
        await asyncio.sleep(0.05)
        print(Keep.made, round(time.process_time() - started, 3), flush=True)

with asyncio.Runner(loop_factory=new_event_loop) as runner:
    runner.run(main())
"""


def test_out_of_descriptors_pauses_accepting_instead_of_spinning() -> None:
    """EMFILE on accept: no busy loop, and accepting resumes once descriptors free up."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _FD_STARVED_SERVER], stdout=subprocess.PIPE, text=True
    )
    clients: list[socket.socket] = []
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
        # 20 lines are ~1 s of the server's life with every client queued.
        starved = [proc.stdout.readline().split() for _ in range(20)][-1]
        made, cpu_s = int(starved[0]), float(starved[1])
        assert 0 < made < 20, "the descriptor limit should have stopped the accepts"
        assert cpu_s < 0.3, f"the loop spun on EMFILE: {cpu_s} s of CPU in ~1 s"
        for client in clients[:made]:
            client.close()  # the server closes its ends too, freeing descriptors
        accepted = made
        for _ in range(30):
            accepted = int(proc.stdout.readline().split()[0])
            if accepted > made:
                break
        assert accepted > made, "accepting did not resume after descriptors were freed"
    finally:
        proc.kill()
        proc.wait()
        for client in clients:
            client.close()
