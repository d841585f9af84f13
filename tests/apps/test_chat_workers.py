"""`tidewire serve --workers 2 --broker redis://`: users on different workers chat."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from realtime.redis_server import RedisServer, free_port
from tidewire.testing import TestClient


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    """A throwaway redis-server."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.kill()


@contextlib.contextmanager
def workers(tmp_path: Path, redis_url: str, count: int = 2) -> Iterator[int]:
    """`tidewire serve --workers N` on a free port; yields the port once every worker listens."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tidewire", "serve", "--workers", str(count)]
        + ["--port", str(port), "--broker", redis_url, "--db", str(tmp_path / "chat.db")],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        # Workers share the pipe, so their lines may interleave: wait (bounded)
        # until every worker has announced itself anywhere in the output.
        fd, seen = proc.stdout.fileno(), b""
        deadline = time.monotonic() + 30
        while not all(f"worker {i} ".encode() in seen for i in range(count)):
            left = max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([fd], [], [], left)
            assert ready and proc.poll() is None, f"workers did not start: {seen!r}"
            seen += os.read(fd, 4096)
        yield port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        assert proc.returncode == 0, proc.returncode


async def on_other_worker(
    stack: contextlib.AsyncExitStack, url: str, name: str, key: str, avoid: str | None
) -> tuple[TestClient, str]:
    """A logged-in client whose worker differs from ``avoid`` (bounded attempts)."""
    for _ in range(40):
        inner = contextlib.AsyncExitStack()
        client = await inner.enter_async_context(TestClient.connect(url))
        await client.authenticate(f"{name}:{key}")
        node = await client.call("chat.node")
        if node != avoid:
            stack.push_async_exit(inner)
            return client, node
        await inner.aclose()
    raise AssertionError("every connection landed on the same worker")


async def test_two_users_on_different_workers_chat(tmp_path: Path, redis: RedisServer) -> None:
    """Ann and Bob on two worker processes share the room: join notices and messages cross."""
    with workers(tmp_path, redis.url) as port:
        url = f"ws://127.0.0.1:{port}/ws"
        async with contextlib.AsyncExitStack() as stack:
            ann, ann_node = await on_other_worker(stack, url, "ann", "a" * 16, None)
            bob, bob_node = await on_other_worker(stack, url, "bob", "b" * 16, ann_node)
            assert ann_node != bob_node
            await ann.join("general")
            joined = await bob.join("general")
            assert joined["members"] == ["ann", "bob"]  # presence is cluster-wide
            assert (await ann.receive("userJoined"))["user"] == "bob"
            await bob.send({"type": "chat", "room": "general", "text": "hi from worker 2"})
            for client in (ann, bob):
                message = await client.receive("chat")
                assert (message["user"], message["text"]) == ("bob", "hi from worker 2")
            await ann.send({"type": "chat", "room": "general", "text": "hello back"})
            assert (await bob.receive("chat"))["text"] == "hello back"

            # Every worker shows the same history: it lives in Redis.
            for name, node in (("cyd", bob_node), ("dan", ann_node)):
                late, _ = await on_other_worker(stack, url, name, name[0] * 16, node)
                await late.join("general")
                history = await late.receive("history")
                texts = [m["text"] for m in history["messages"]]
                assert texts == ["hi from worker 2", "hello back"]


def test_workers_need_a_shared_broker(tmp_path: Path) -> None:
    """--workers 2 on the in-memory broker is refused with a clear error."""
    out = subprocess.run(
        [sys.executable, "-m", "tidewire", "serve", "--workers", "2", "--db", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert "--broker redis://" in out.stderr
