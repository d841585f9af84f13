"""Real node processes on one redis-server: a node SIGKILLed mid-stream, Redis restarted under them.

Each node is a separate Python process (``NODE_SCRIPT``: an App on a
RedisBroker, serving on its own loopback port), so a node's death is a real
``SIGKILL``: no close frames, no cleanup, sockets closed by the kernel.  The
clients are tidewire's own :class:`tidewire.Client` (given both node URLs, it
starts at a random one and fails over) and a plain ``websockets`` client that
resubscribes by hand, as a browser would; both sit on the node the Client
picked.  The publisher is a third connection, to the other node, publishing
over the wire.  Every wait is bounded; every process is killed by its pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tidewire import Client
from tidewire.realtime import SUBPROTOCOL

from .conftest import TIMEOUT, recv_json, send_json
from .redis_server import RedisServer, _die_with_parent, running_redis, unique_prefix
from .test_redis_broker import until

#: A node: an App on a RedisBroker at argv[1] with key prefix argv[2], on a free
#: loopback port that it prints as JSON; it exits by itself after argv[3] seconds.
#: ``history_size`` 1000 keeps every publication of a test recoverable.
NODE_SCRIPT = """
import asyncio, json, sys
from tidewire.realtime import App
from tidewire.realtime.brokers import RedisBroker

async def main(url, prefix, lifetime):
    broker = RedisBroker(
        url, prefix=prefix, history_size=1000, reconnect_base=0.05, reconnect_cap=0.3,
        keepalive=1.0, command_timeout=1.0, start_timeout=3.0,
    )
    app = App(broker=broker, rate_limits=None)
    async with app.serve("127.0.0.1", 0) as server:
        print(json.dumps({"port": server.port}), flush=True)
        await asyncio.sleep(lifetime)

asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
"""

#: Seconds a node process has to print its port (imports, Redis subscription).
NODE_START_TIMEOUT = 10.0
#: Seconds a node process lives at most, should a teardown ever be skipped.
NODE_LIFETIME = 60.0
#: The channel every test publishes to.
CHANNEL = "feed"


class Node:
    """One App node in its own process; ``kill()`` is a SIGKILL."""

    def __init__(self, redis_url: str, prefix: str, log: Path) -> None:
        """Start the process and wait (bounded) for its port."""
        self.log = log
        with log.open("wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-c", NODE_SCRIPT, redis_url, prefix, str(NODE_LIFETIME)],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                preexec_fn=_die_with_parent,
            )
        self.port = 0

    def wait_ready(self) -> None:
        """Read the port the node printed; fail with its log if it does not come."""
        stdout = self.process.stdout
        assert stdout is not None
        ready, _, _ = select.select([stdout], [], [], NODE_START_TIMEOUT)
        line = stdout.readline() if ready else ""
        if not line:
            self.kill()
            pytest.fail(f"node did not start:\n{self.log.read_text(errors='replace')}")
        self.port = int(json.loads(line)["port"])

    @property
    def url(self) -> str:
        """The node's WebSocket URL."""
        return f"ws://127.0.0.1:{self.port}/ws"

    def kill(self) -> None:
        """SIGKILL the node (if it still runs) and reap it."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()


@contextlib.contextmanager
def running_nodes(redis: RedisServer, tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    """Two node processes on one prefix of ``redis``, both killed on exit."""
    prefix = unique_prefix("node")
    nodes: list[Node] = []
    try:
        for name in ("node1", "node2"):
            nodes.append(Node(redis.url, prefix, tmp_path / f"{name}.log"))
        for node in nodes:
            node.wait_ready()
        yield nodes[0], nodes[1]
    finally:
        for node in nodes:
            node.kill()


@contextlib.asynccontextmanager
async def open_ws(url: str) -> AsyncIterator[ClientConnection]:
    """A plain websockets client speaking tidewire.v1; the hello is consumed."""
    async with websockets.connect(
        url,
        subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
        open_timeout=TIMEOUT,
        close_timeout=TIMEOUT,
        ping_interval=None,
    ) as ws:
        hello = await recv_json(ws)
        assert hello["type"] == "connection", hello
        yield ws


async def request(ws: ClientConnection, envelope: dict[str, Any]) -> dict[str, Any]:
    """Send ``envelope`` and return the next envelope."""
    await send_json(ws, envelope)
    return await recv_json(ws)


async def publish(ws: ClientConnection, n: int) -> dict[str, Any]:
    """Publish ``{"n": n}`` and return the answer (``published`` or ``error``)."""
    return await request(ws, {"type": "publish", "channel": CHANNEL, "payload": {"n": n}, "id": n})


async def test_a_sigkilled_nodes_clients_resume_on_the_other_node_without_loss(
    tmp_path: Path,
) -> None:
    """A node SIGKILLed mid-stream: its clients resume on the other, every offset once, in order."""
    total, kill_at, pause = 300, 100, 0.01  # about 3 s of publishing
    with running_redis() as redis, running_nodes(redis, tmp_path) as (node1, node2):
        # tidewire.Client: what its channel callback gets, and every publication
        # that came over the wire (before its own duplicate filter).
        delivered: list[int] = []
        payloads: list[Any] = []
        on_wire: list[int] = []
        resubscribed: list[dict[str, Any]] = []

        def on_message(envelope: dict[str, Any]) -> None:
            if envelope["type"] == "publish":
                on_wire.append(envelope["offset"])
            elif envelope["type"] == "subscribed":
                on_wire.extend(p["offset"] for p in envelope.get("publications", ()))
                if delivered:
                    resubscribed.append(envelope)

        def on_publication(envelope: dict[str, Any]) -> None:
            delivered.append(envelope["offset"])
            payloads.append(envelope["payload"])

        client = Client(
            [node1.url, node2.url],
            reconnect_base=0.05,
            reconnect_cap=0.2,
            open_timeout=TIMEOUT,
            call_timeout=TIMEOUT,
        )
        client.on("message", on_message)
        await client.connect()
        try:
            # The Client starts at a random node: that one dies, the other publishes.
            victim, survivor = (node1, node2) if client.url == node1.url else (node2, node1)
            await client.subscribe(CHANNEL, on_publication)
            epoch, offset = client.position(CHANNEL) or ("", -1)
            assert offset == 0

            # The plain client: on the victim until it dies, then on the survivor with since.
            raw: list[int] = []
            raw_subscribed = asyncio.Event()

            async def plain_client() -> tuple[ConnectionClosed, dict[str, Any]]:
                async with open_ws(victim.url) as ws:
                    first = await request(ws, {"type": "subscribe", "channel": CHANNEL})
                    assert (first["type"], first["epoch"], first["offset"]) == (
                        "subscribed",
                        epoch,
                        0,
                    ), first
                    raw_subscribed.set()
                    try:
                        while True:
                            envelope = await recv_json(ws)
                            assert envelope["type"] == "publish", envelope
                            raw.append(envelope["offset"])
                    except ConnectionClosed as exc:
                        closed = exc
                # Stay away a while: what is published meanwhile must come from history.
                await asyncio.sleep(0.3)
                async with open_ws(survivor.url) as ws:
                    since = {"epoch": epoch, "offset": raw[-1] if raw else 0}
                    reply = await request(
                        ws, {"type": "subscribe", "channel": CHANNEL, "since": since}
                    )
                    assert reply["type"] == "subscribed", reply
                    raw.extend(p["offset"] for p in reply["publications"])
                    while raw[-1] < total:
                        envelope = await recv_json(ws)
                        assert envelope["type"] == "publish", envelope
                        raw.append(envelope["offset"])
                    ping = await request(ws, {"type": "ping", "id": "end"})
                    assert ping == {"type": "pong", "id": "end"}, "more after the last offset"
                return closed, reply

            loop = asyncio.get_running_loop()
            plain = loop.create_task(plain_client())
            await asyncio.wait_for(raw_subscribed.wait(), TIMEOUT)

            # The publisher, on the survivor: one acknowledged publish every 10 ms.
            acked: list[int] = []
            halfway = asyncio.Event()

            async def publisher() -> None:
                async with open_ws(survivor.url) as ws:
                    for n in range(total):
                        answer = await publish(ws, n)
                        assert answer["type"] == "published", answer
                        acked.append(answer["offset"])
                        if len(acked) == kill_at:
                            halfway.set()
                        await asyncio.sleep(pause)

            publishing = loop.create_task(publisher())
            await asyncio.wait_for(halfway.wait(), 10)
            await until(lambda: bool(delivered and raw), "both clients received publications")
            victim.kill()  # SIGKILL mid-stream
            at_kill = (len(delivered), len(raw))
            assert all(0 < count < total for count in at_kill), at_kill

            await asyncio.wait_for(publishing, 15)
            closed, reply = await asyncio.wait_for(plain, 15)
            await until(lambda: len(delivered) >= total, "the Client has every offset", 10)

            every = list(range(1, total + 1))
            assert acked == every
            # The plain client: the node died without a close frame; the survivor had the gap.
            assert closed.rcvd is None, closed
            assert reply["recovered"] is True and reply["epoch"] == epoch, reply
            assert len(reply["publications"]) > 0, "nothing was published while away"
            assert raw == every
            # tidewire.Client: failed over to the survivor, recovered, and the server sent
            # each publication once (no duplicate for its filter to drop).
            assert client.url == survivor.url
            assert [r["recovered"] for r in resubscribed] == [True], resubscribed
            assert all(r["epoch"] == epoch for r in resubscribed)
            assert delivered == every, f"killed at {at_kill}"
            assert on_wire == every
            assert payloads == [{"n": n} for n in range(total)]
            assert client.position(CHANNEL) == (epoch, total)
        finally:
            await client.close()


async def test_redis_restarted_empty_under_node_processes_the_client_goes_on_in_a_new_epoch(
    tmp_path: Path,
) -> None:
    """Redis restarted empty: the Client is told (recovery_failed) and gets the new epoch's 1..5."""
    with running_redis() as redis, running_nodes(redis, tmp_path) as (node1, node2):
        delivered: list[tuple[int, Any]] = []
        failed: asyncio.Queue[str] = asyncio.Queue()
        client = Client([node1.url, node2.url], reconnect_base=0.05, reconnect_cap=0.2)
        client.on("recovery_failed", failed.put_nowait)
        await client.connect()
        try:
            # The Client starts at a random node; the publisher uses the other one.
            home = client.url
            other = node2 if home == node1.url else node1
            await client.subscribe(
                CHANNEL,
                lambda envelope: delivered.append((envelope["offset"], envelope["payload"])),
            )
            before = client.position(CHANNEL)
            assert before is not None
            async with open_ws(other.url) as ws:
                for n in range(5):
                    assert (await publish(ws, n))["offset"] == n + 1
                await until(lambda: len(delivered) == 5, "the first five arrived")

                redis.restart()  # SIGKILL, then an empty Redis on the same port
                assert await asyncio.wait_for(failed.get(), 10) == CHANNEL
                after = client.position(CHANNEL)
                assert after is not None and after[0] != before[0] and after[1] == 0, after
                assert client.url == home  # the node connection itself never dropped

                # The other node may still be reconnecting: publish until Redis takes it.
                for _ in range(100):
                    answer = await publish(ws, 5)
                    if answer["type"] == "published":
                        break
                    assert answer["code"] == "broker_unavailable", answer
                    await asyncio.sleep(0.05)
                else:
                    pytest.fail("the other node never published after the restart")
                assert answer["offset"] == 1, answer
                for n in range(6, 10):
                    assert (await publish(ws, n))["offset"] == n - 4
            await until(lambda: len(delivered) == 10, "the new epoch's five arrived")
            assert delivered == [(n + 1, {"n": n}) for n in range(5)] + [
                (n - 4, {"n": n}) for n in range(5, 10)
            ]
            assert client.position(CHANNEL) == (after[0], 5)
            assert failed.empty()
        finally:
            await client.close()
