"""Several URLs: random start, round-robin spread, ``/health`` probes and failover.

Every node is a real App on loopback.  A sick node answers ``/health`` with 503
through a ``process_request`` hook while still accepting WebSockets, so a client
that lands on it proves the probe was skipped.  Starting nodes come from the
``random`` module, seeded per test, so which client starts where repeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest
import trustme

from tidewire.errors import RPCError
from tidewire.protocol.close import CloseAction, CloseCode
from tidewire.protocol.http import Request, Response
from tidewire.realtime import SUBPROTOCOL, App
from tidewire.realtime.client import Client, ClientState
from tidewire.realtime.client.nodes import probe_health
from tidewire.transport import Server, ServerConnection, connect

from .clientkit import FAST, TIMEOUT, free_port, kicking_app, until, url_of, when

#: Seed of the random module for the tests that depend on starting nodes.
SEED = 20240611


class Health:
    """A process_request hook: ``/health`` answers ``status`` (the probes are counted)."""

    def __init__(self, status: int = 503) -> None:
        """Answer ``status`` from now on."""
        self.status = status
        self.probes = 0

    def __call__(self, ws: ServerConnection, request: Request) -> Response | None:
        """Answer /health; everything else goes on to the App."""
        if request.path_only != "/health":
            return None
        self.probes += 1
        return Response.build(self.status, b'{"status":"sick"}', content_type="application/json")


@pytest.fixture
def seeded() -> Iterator[None]:
    """The random module seeded with SEED for the test, its state restored afterwards."""
    state = random.getstate()
    random.seed(SEED)
    try:
        yield
    finally:
        random.setstate(state)


@contextlib.asynccontextmanager
async def cluster(
    apps: Sequence[App], hooks: Sequence[Health | None] = (), **serve: Any
) -> AsyncIterator[list[Server]]:
    """Serve each App on its own loopback port (with its hook, if any); stop them all after."""
    async with contextlib.AsyncExitStack() as stack:
        servers = []
        for n, app in enumerate(apps):
            hook = hooks[n] if n < len(hooks) else None
            kwargs = dict(serve, process_request=hook) if hook is not None else serve
            servers.append(await stack.enter_async_context(app.serve("127.0.0.1", 0, **kwargs)))
        yield servers


def node_of(client: Client, apps: Sequence[App]) -> int:
    """The index of the App the client's connection is on."""
    found = [n for n, app in enumerate(apps) if client.connection_id in app.hub.sessions]
    assert len(found) == 1, found
    return found[0]


def starting_at(urls: list[str], index: int, **options: Any) -> Client:
    """A new Client whose random starting node is ``urls[index]`` (clients are drawn in turn)."""
    for _ in range(100):
        client = Client(urls, **options)
        if client.url == urls[index]:
            return client
    raise AssertionError(f"no client started at {urls[index]} in 100 draws")


# ------------------------------------------------------------------ rotation


async def test_starting_node_is_random_per_client_and_repeats_with_a_seed() -> None:
    """Clients given one list start on different nodes; random.seed() repeats the draw."""
    urls = [f"ws://127.0.0.1:{port}/ws" for port in (1001, 1002, 1003)]
    state = random.getstate()
    try:
        random.seed(SEED)
        starts = [Client(urls).url for _ in range(30)]
        random.seed(SEED)
        again = [Client(urls).url for _ in range(30)]
        assert set(starts) == set(urls) and starts == again
        before = random.getstate()
        assert Client(urls[0]).url == urls[0]
        assert random.getstate() == before  # one URL: nothing drawn
    finally:
        random.setstate(state)
    with pytest.raises(ValueError, match="health_timeout"):
        Client(urls, health_timeout=0)


async def test_connections_spread_over_the_nodes(seeded: None) -> None:
    """20 clients over 2 healthy nodes: each node gets some, each client its starting node."""
    apps = [App(), App()]
    async with cluster(apps) as servers:
        urls = [url_of(server) for server in servers]
        clients = [Client(urls, **FAST) for _ in range(20)]
        starts = [client.url for client in clients]
        async with contextlib.AsyncExitStack() as stack:
            for client in clients:
                await stack.enter_async_context(client)
            assert [client.url for client in clients] == starts
            counts = [len(app.hub.sessions) for app in apps]
            assert sum(counts) == 20 and min(counts) >= 5, counts
            assert [urls[node_of(client, apps)] for client in clients] == starts


async def test_each_reconnect_moves_to_the_next_node(seeded: None) -> None:
    """After a drop the client goes on to the next node in the list, wrapping around."""
    apps = [kicking_app(), kicking_app(), kicking_app()]
    async with cluster(apps) as servers:
        urls = [url_of(server) for server in servers]
        async with Client(urls, **FAST) as client:
            visited = [node_of(client, apps)]
            for _ in range(3):
                reopened = when(client, "state", lambda state: state is ClientState.OPEN)
                with pytest.raises(RPCError):
                    await client.call("kick")
                await until(reopened)
                visited.append(node_of(client, apps))
            first = visited[0]
            assert visited == [(first + step) % 3 for step in range(4)]


# -------------------------------------------------------------- health checks


async def test_node_answering_503_on_health_is_skipped(seeded: None) -> None:
    """No client lands on a node whose /health says 503, whatever node it starts at."""
    apps = [App(), App()]
    sick = Health(503)
    async with cluster(apps, [sick]) as servers:
        urls = [url_of(server) for server in servers]
        clients = [Client(urls, **FAST) for _ in range(10)]
        assert {client.url for client in clients} == set(urls)
        async with contextlib.AsyncExitStack() as stack:
            for client in clients:
                await stack.enter_async_context(client)
            assert all(client.url == urls[1] for client in clients)
            assert apps[0].stats["connections"] == 0 and len(apps[1].hub.sessions) == 10
        assert sick.probes >= 1
        unchecked = starting_at(urls, 0, health_check=False, **FAST)
        async with unchecked:
            assert node_of(unchecked, apps) == 0  # health_check=False: no probe, no skip


async def test_node_not_answering_health_in_time_is_skipped(seeded: None) -> None:
    """A node that accepts TCP but never answers is skipped after health_timeout."""
    release = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(release.wait(), TIMEOUT)
        writer.close()

    listener = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    app = App()
    try:
        async with cluster([app]) as servers:
            urls = [f"ws://127.0.0.1:{port}/ws", url_of(servers[0])]
            client = starting_at(urls, 0, health_timeout=0.1, **FAST)
            loop = asyncio.get_running_loop()
            started = loop.time()
            async with client:
                assert client.url == urls[1]
                assert loop.time() - started < TIMEOUT  # not open_timeout on the silent node
    finally:
        release.set()
        listener.close()
        await listener.wait_closed()


async def test_every_node_unhealthy_still_connects(seeded: None) -> None:
    """When no node passes its probe (503, or no /health route) each is tried anyway."""
    apps = [App(), App()]
    async with cluster(apps, [Health(503), Health(503)]) as servers:
        urls = [url_of(server) for server in servers]
        for start in (0, 1):
            async with starting_at(urls, start, **FAST) as client:
                assert node_of(client, apps) == start
    apps = [App(), App()]
    async with cluster(apps, health_path=None) as servers:  # /health is a 404
        urls = [url_of(server) for server in servers]
        async with starting_at(urls, 1, **FAST) as client:
            assert node_of(client, apps) == 1


async def test_draining_node_is_skipped(seeded: None) -> None:
    """A node shutting down answers /health with 503 while it drains: new clients go elsewhere."""
    apps = [App(), App()]
    async with cluster(apps[1:]) as others:
        draining = await apps[0].serve("127.0.0.1", 0, close_timeout=TIMEOUT)
        urls = [url_of(draining), url_of(others[0])]
        # A peer that stops reading never answers the server's close: the drain lasts.
        holder = await connect(urls[0], subprotocols=[SUBPROTOCOL], open_timeout=TIMEOUT)
        assert holder.transport is not None
        holder.transport.pause_reading()
        shutdown = asyncio.ensure_future(draining.shutdown(timeout=TIMEOUT, spread=0.0))
        try:
            await asyncio.sleep(0)  # one loop turn: shutdown() marks the server draining
            assert draining.draining
            assert await probe_health(urls[0], timeout=TIMEOUT) == 503
            async with starting_at(urls, 0, **FAST) as client:
                assert node_of(client, apps) == 1
        finally:
            holder.transport.resume_reading()
            await asyncio.wait_for(shutdown, TIMEOUT * 2)
            await holder.close()
            await apps[0].close()


async def test_failover_when_a_node_shuts_down_mid_session(seeded: None) -> None:
    """The node goes away (1001): the client moves to the next healthy node, rooms and all."""
    apps = [App(), App(), App()]
    sick = Health(503)
    async with cluster(apps[1:], [sick]) as servers:
        first = await apps[0].serve("127.0.0.1", 0)
        urls = [url_of(first), *(url_of(server) for server in servers)]
        client = starting_at(urls, 0, **FAST)
        await client.connect()
        try:
            await client.join("lobby")
            assert node_of(client, apps) == 0
            closes = when(client, "close")
            reopened = when(client, "state", lambda state: state is ClientState.OPEN)
            await first.shutdown(spread=0.0)
            await apps[0].close()
            disconnect = await until(closes)
            assert (disconnect.code, disconnect.action) == (
                CloseCode.GOING_AWAY,
                CloseAction.RECONNECT,
            )
            await until(reopened)
            assert node_of(client, apps) == 2 and client.url == urls[2]  # 1 is sick
            assert sick.probes >= 1
            session = apps[2].hub.sessions[client.connection_id or ""]
            assert session.rooms == {"lobby"}
            assert await client.call("rooms.list") == [{"room": "lobby", "members": 1}]
        finally:
            await client.close()


async def test_connect_without_retry_raises_when_every_node_is_down() -> None:
    """connect() tries every node once (probes failing, then each anyway) and raises."""
    dead = [f"ws://127.0.0.1:{free_port()}/ws" for _ in range(2)]
    client = Client(dead, **FAST)
    with pytest.raises(OSError):
        await client.connect()
    assert client.state is ClientState.CLOSED


# ---------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def contexts() -> Iterator[tuple[ssl.SSLContext, ssl.SSLContext]]:
    """A server context with a cert for 127.0.0.1 and a client context trusting it."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    yield server_ctx, client_ctx


async def test_health_probe_over_tls_uses_the_clients_context(
    seeded: None, contexts: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    """wss:// nodes are probed over https with the client's ssl context: the sick one is skipped.

    Were the probe unable to verify the certificate, every node would look
    unhealthy and the clients starting on the sick one would land there.
    """
    server_ctx, client_ctx = contexts
    apps = [App(), App()]
    async with cluster(apps, [Health(503)], ssl=server_ctx) as servers:
        urls = [f"wss://127.0.0.1:{server.port}/ws" for server in servers]
        assert await probe_health(urls[0], timeout=TIMEOUT, ssl=client_ctx) == 503
        assert await probe_health(urls[1], timeout=TIMEOUT, ssl=client_ctx) == 200
        assert await probe_health(urls[1], timeout=TIMEOUT) is None  # untrusted CA
        async with starting_at(urls, 0, ssl=client_ctx, **FAST) as client:
            assert node_of(client, apps) == 1


async def test_probe_health_reads_the_status_or_gives_none() -> None:
    """probe_health: 200 and 503 as answered; None when refused or the answer is not HTTP."""

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH\r\n")
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        async with cluster([App(), App()], [None, Health(503)]) as servers:
            assert await probe_health(url_of(servers[0]), timeout=TIMEOUT) == 200
            assert await probe_health(url_of(servers[1]), timeout=TIMEOUT) == 503
        assert await probe_health(f"ws://127.0.0.1:{free_port()}/ws", timeout=TIMEOUT) is None
        assert await probe_health(f"ws://127.0.0.1:{port}/ws", timeout=TIMEOUT) is None
    finally:
        listener.close()
        await listener.wait_closed()
