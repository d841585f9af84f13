"""Room broadcast: tidewire.transport.broadcast next to websockets.broadcast, same setup.

The issue's benchmark: one server, ``--clients`` (10,000) connected clients in one room,
a ``--size`` (100) byte text message broadcast ``--messages`` (100) times.  Reported per
run and as medians over ``--repeat`` runs, server kinds interleaved (A, B, A, B ...):

* deliveries/s = clients * messages / (last arrival - first broadcast);
* for each message i, the time from its broadcast until the last client has it,
  summarised as p50 / p99 / max over the messages;
* server_s: from the first broadcast to the end of the server's last flush (the
  send side alone), and setup_s: connecting and upgrading every client.

Three processes (this is a 2-core machine):

* driver: this script without a subcommand; starts the two others per run;
* server (``_server --kind K``), pinned to core 0 (``taskset -c 0``): a WebSocket
  server whose handler only puts each connection in the room, plus a plain TCP
  control port;
* load (``_load``), pinned to core 1: ``--clients`` raw asyncio connections that send
  a fixed upgrade request, check for a 101 and from then on only parse frame headers
  and count; a message "arrives" when its frame's last byte does, timestamped once
  per ``data_received`` (``time.monotonic``: CLOCK_MONOTONIC, the same clock in both
  processes).

Joining (the App kinds): each client sends its ``join`` right after the upgrade and
waits for the answer before giving its connection slot to the next one, so at most
64 joins are in flight; a join answered with ``error`` (a RedisBroker under a join
storm answers ``broker_unavailable``) is sent again after a short pause, up to 20
times, and the run line counts the retries.  setup_s includes the joins.

Trigger and pacing: once every client is upgraded, the load process writes one JSON
line to the control port; the server waits until the room holds every client, then
broadcasts the messages one per event-loop iteration (``await asyncio.sleep(0)``
between two broadcasts, so tidewire's scheduled flush runs between them as
websockets' immediate writes do), records when each broadcast started and answers
with those times.  ``--per-turn K`` broadcasts K messages per iteration instead (a
burst, as when one read brings several messages to fan out): tidewire then writes
once per client and iteration, websockets once per client and message.  Both
servers: compression off, keepalive pings off.  Every wait is bounded
(``--timeout``); everything runs on 127.0.0.1.

Two workers behind Redis (``--server tidewire-app-2w``): the "server" process is a
coordinator that starts a throwaway redis-server (no persistence, loopback) and two
``tidewire-app`` workers, each an App on a ``RedisBroker`` listening on the same
port with SO_REUSEPORT, so the kernel spreads the clients over them (about half
each; the run line shows the split).  Clients join over the wire as for
``tidewire-app``.  On the load's order the coordinator waits until both rooms
together hold every client, then worker 1 runs the broadcast loop: each
``emit_room`` writes to worker 1's members, then PUBLISHes once to Redis and awaits
the reply; worker 2 gets the message from its subscription and writes it to its
members.  Latency is still measured from worker 1's broadcast start; server_s ends
at the later of worker 1's last broadcast and worker 2's last fan-out (the run line
shows both); peak RSS is both workers'.  Pinning (``--pin-2w``), with the load on
core 1 throughout: ``shared`` (default) puts redis-server and both workers on core 0,
the one core every other kind gets, so the difference to ``tidewire-app`` is the
cost of the split alone; ``split`` moves worker 2 to core 1, where it runs in
parallel with worker 1 but competes with the load process.  A 2-core machine
cannot give two workers and the load a core each, so neither shows clean scaling.

File descriptors: each of the server and load processes holds one socket per client
plus a few; the soft RLIMIT_NOFILE is raised to the hard one (20,000 here) and a run
that would not fit is refused.

Usage::

    python bench/broadcast.py                      # 10,000 clients, both servers, 3 runs each
    python bench/broadcast.py --clients 1000 --repeat 5 --server tidewire
    python bench/broadcast.py --server tidewire-app --server tidewire-app-2w  # needs redis-server
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import json
import os
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

HOST = "127.0.0.1"
#: Upgrades in flight from the load side: under the servers' listen backlog (100).
CONNECT_CONCURRENCY = 64
#: Descriptors each process needs besides one socket per client.
FD_SPARE = 64
#: Times a client sends its join when the App answers ``error`` (e.g. broker_unavailable).
JOIN_ATTEMPTS = 20


# ---------------------------------------------------------------------- server kinds


class RoomServer(Protocol):
    """One server kind: a WebSocket server whose connections all join one room."""

    #: Where clients upgrade.
    path: str
    #: Text frame a client sends right after the upgrade (masked), or b"" for none.
    join_frame: bytes

    async def start(self, host: str) -> int:
        """Listen on ``host`` port 0 with compression and pings off; return the port."""
        ...

    def members(self) -> int:
        """Connections in the room now."""
        ...

    def broadcast(self, message: str) -> Awaitable[None] | None:
        """Send ``message`` to the whole room (may return an awaitable to wait for)."""
        ...

    async def stop(self) -> None:
        """Stop listening (the process exits right after)."""
        ...


class TidewireRoom:
    """tidewire.transport.serve + tidewire.transport.broadcast."""

    path = "/room"
    join_frame = b""

    def __init__(self) -> None:
        """An empty room."""
        from tidewire.transport import WebSocket

        self.room: set[WebSocket] = set()
        self.server: Any = None

    async def start(self, host: str) -> int:
        """Serve; each handler joins the room until its connection closes."""
        from tidewire.transport import WebSocket, serve

        async def handler(ws: WebSocket) -> None:
            self.room.add(ws)
            try:
                await ws.wait_closed()
            finally:
                self.room.discard(ws)

        self.server = await serve(
            handler, host, 0, compression=False, ping_interval=None, open_timeout=None
        )
        return int(self.server.port)

    def members(self) -> int:
        """Connections in the room."""
        return len(self.room)

    def broadcast(self, message: str) -> None:
        """Encode once, frame once, queue on every member."""
        from tidewire.transport import broadcast

        broadcast(self.room, message)

    async def stop(self) -> None:
        """Stop listening."""
        self.server.close()


class WebsocketsRoom:
    """websockets.asyncio.server.serve + websockets.asyncio.server.broadcast."""

    path = "/room"
    join_frame = b""

    def __init__(self) -> None:
        """An empty room."""
        self.room: set[Any] = set()
        self.server: Any = None

    async def start(self, host: str) -> int:
        """Serve; each handler joins the room until its connection closes."""
        from websockets.asyncio.server import serve

        async def handler(ws: Any) -> None:
            self.room.add(ws)
            try:
                await ws.wait_closed()
            finally:
                self.room.discard(ws)

        self.server = await serve(
            handler, host, 0, compression=None, ping_interval=None, open_timeout=None
        )
        return int(self.server.sockets[0].getsockname()[1])

    def members(self) -> int:
        """Connections in the room."""
        return len(self.room)

    def broadcast(self, message: str) -> None:
        """websockets' own broadcast (frames per connection, writes immediately)."""
        from websockets.asyncio.server import broadcast

        broadcast(self.room, message)

    async def stop(self) -> None:
        """Stop listening."""
        self.server.close()


def masked_text_frame(text: str) -> bytes:
    """A client text frame with a zero masking key (valid; the payload stays readable)."""
    payload = text.encode()
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + b"\x00\x00\x00\x00" + payload


class AppRoom:
    """tidewire.realtime.App: clients send ``join`` over the wire; ``app.emit_room`` fans out.

    The whole messaging path: envelope encoded once, broker, hub, encode-once
    transport broadcast, per-receiver slow-consumer check.  The room has more
    users than ``presence_events_max``, so joins cost one batched ``presence``
    count instead of N^2 ``userJoined`` messages.  Each envelope is padded so
    its frame payload is exactly ``--size`` bytes, like the other kinds.
    """

    path = "/ws"
    join_frame = masked_text_frame('{"type":"join","room":"bench"}')

    def __init__(self, broker: Any = None) -> None:
        """An App with no rate limit or idle timeout (the load side only listens)."""
        from tidewire.realtime import App

        self.app = App(rate_limits=None, idle_timeout=None, max_connections=None, broker=broker)
        self.server: Any = None

    async def start(self, host: str) -> int:
        """Serve the App."""
        self.server = await self.app.serve(
            host, 0, compression=False, ping_interval=None, open_timeout=None
        )
        return int(self.server.port)

    def members(self) -> int:
        """Connections in the room."""
        room = self.app.hub.rooms.get("bench")
        return len(room.conns) if room is not None else 0

    def broadcast(self, message: str) -> Awaitable[None]:
        """``app.emit_room`` with an envelope whose JSON is ``len(message)`` bytes."""
        pad = len(message) - len('{"type":"bench","data":""}')
        return self.app.emit_room("bench", {"type": "bench", "data": message[: max(pad, 0)]})

    async def stop(self) -> None:
        """Stop listening."""
        self.server.close()


class RedisWorkerRoom(AppRoom):
    """One worker of ``tidewire-app-2w``: an AppRoom on a RedisBroker, its port shared.

    Both workers listen on the same port with SO_REUSEPORT, so the kernel
    spreads the clients over them (about half each); an ``emit_room`` on one
    worker writes to its own members at once and PUBLISHes once to Redis, and
    the other worker writes the same envelope to its members.  Each worker
    counts its local fan-outs of bench messages and times the last one, so the
    coordinator knows when the second half of the room has been written.
    """

    def __init__(self, redis_url: str, port: int) -> None:
        """An AppRoom on ``RedisBroker(redis_url)`` that will listen on ``port``."""
        from tidewire.realtime.brokers import RedisBroker

        super().__init__(broker=RedisBroker(redis_url, prefix="bench:"))
        self.port = port
        self.fanned = 0
        self.last_fanout = 0.0
        hub = self.app.hub
        metrics = hub.on_broadcast

        def counted(ready: list[Any], text: str) -> None:
            if metrics is not None:
                metrics(ready, text)
            if text.startswith('{"type":"bench"'):
                self.fanned += 1
                self.last_fanout = time.monotonic()

        hub.on_broadcast = counted

    async def start(self, host: str) -> int:
        """Serve the App on the shared port (SO_REUSEPORT)."""
        self.server = await self.app.serve(
            host,
            self.port,
            reuse_port=True,
            compression=False,
            ping_interval=None,
            open_timeout=None,
        )
        return self.port

    async def stop(self) -> None:
        """Stop listening and close the broker's Redis connections."""
        self.server.close()
        await self.app.close()


#: Server kinds by --server name.  Interleaved in this order within each repeat.
#: For the multi-process kinds the class only gives the clients' path and join frame.
SERVERS: dict[str, Callable[[], RoomServer]] = {
    "tidewire": TidewireRoom,
    "websockets": WebsocketsRoom,
    "tidewire-app": AppRoom,
    "tidewire-app-2w": AppRoom,
}
#: Kinds served by a redis-server and two RedisWorkerRoom processes (coordinator_main).
TWO_WORKER_KINDS = frozenset({"tidewire-app-2w"})
#: The kind the others are compared against in the ratio lines.
BASELINE = "websockets"
#: Further ratio lines: kind -> the kind it is compared against.
COMPARED = {"tidewire-app-2w": "tidewire-app"}
#: Cores of (redis-server, worker 1, worker 2) per --pin-2w; the load is always on core 1.
PINNING = {"shared": ("0", "0", "0"), "split": ("0", "0", "1")}
PIN_NOTES = {
    "shared": "the server side gets the one core every other kind gets, so the "
    "difference to tidewire-app is the cost of the split alone (Redis, two event "
    "loops, context switches); it cannot show a gain from the second worker",
    "split": "the workers run in parallel, but worker 2 shares core 1 with the load "
    "process, so neither gets a whole core and the load timestamps arrivals late: "
    "a hint of what a second core buys, not a measure of 2-core scaling",
}


# ---------------------------------------------------------------------------- common


def raise_fd_limit(needed: int) -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit; SystemExit if ``needed`` won't fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if needed > soft:
        raise SystemExit(f"needs {needed} file descriptors, ulimit -n allows {soft}")


def make_messages(count: int, size: int) -> list[str]:
    """``count`` distinct ASCII text messages of exactly ``size`` bytes (size >= 8)."""
    filler = "abcdefghijklmnopqrstuvwxyz" * (size // 26 + 1)
    return [(f"{i:07d} " + filler)[:size] for i in range(count)]


# ---------------------------------------------------------------------- server process


async def server_main(args: argparse.Namespace) -> None:
    """Serve the room and a control port; broadcast when the load side says so.

    The control connection takes one JSON line per order: ``{"op": "status"}``
    answers the room's size and fan-out counters at once (the 2-worker
    coordinator polls it); any other line is a broadcast order, answered with
    the broadcast times.  The process exits when the connection closes.
    """
    raise_fd_limit(args.clients + FD_SPARE)
    room: Any = (
        RedisWorkerRoom(args.redis, args.listen_port) if args.redis else SERVERS[args.kind]()
    )
    port = await room.start(HOST)
    finished = asyncio.Event()

    async def control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                order = json.loads(line)
                if order.get("op") == "status":
                    reply = {
                        "members": room.members(),
                        "fanned": getattr(room, "fanned", 0),
                        "last_fanout": getattr(room, "last_fanout", 0.0),
                        "rss_peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                    }
                else:
                    reply = await broadcast_all(room, order, args.timeout)
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        finally:
            writer.close()
            finished.set()

    control_server = await asyncio.start_server(control, HOST, 0)
    control_port = control_server.sockets[0].getsockname()[1]
    print(json.dumps({"port": port, "control": control_port}), flush=True)
    try:
        async with asyncio.timeout(args.timeout * 3):
            await finished.wait()
    finally:
        control_server.close()
        await room.stop()


async def broadcast_all(room: Any, order: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Wait for the room to fill (``wait_members``, default every client), then broadcast."""
    messages = make_messages(order["messages"], order["size"])
    per_turn = order["per_turn"]
    async with asyncio.timeout(timeout):
        while room.members() < order.get("wait_members", order["clients"]):
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # let the last handlers settle
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sent: list[float] = []
    for i, message in enumerate(messages, 1):
        sent.append(time.monotonic())
        result = room.broadcast(message)
        if result is not None:
            await result
        if i % per_turn == 0 or i == len(messages):
            await asyncio.sleep(0)  # per_turn broadcasts per loop iteration
    end = time.monotonic()
    return {
        "sent": sent,
        "end": end,
        "members": room.members(),
        "rss_start_kib": rss_start,
        "rss_peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


# ----------------------------------------------------------- two workers on one Redis


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def start_redis(core: str, timeout: float) -> tuple[subprocess.Popen[bytes], str]:
    """A throwaway redis-server on ``core`` (no persistence); return it and its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("tidewire-app-2w needs redis-server (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [
            *("taskset", "-c", core, binary, "--port", str(port), "--bind", HOST),
            *("--save", "", "--appendonly", "no", "--loglevel", "warning"),
        ],
        stdout=subprocess.DEVNULL,
        preexec_fn=die_with_parent,
    )
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}")
        try:
            with socket.create_connection((HOST, port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://{HOST}:{port}/0"
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"redis-server not up within {timeout}s")
        time.sleep(0.02)


def die_with_parent() -> None:
    """In a child: SIGKILL it when its parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def stop_process(proc: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """Wait ``grace`` seconds for ``proc`` to exit by itself, then SIGTERM, then SIGKILL."""
    for step in (None, proc.terminate, proc.kill):
        if step is not None:
            step()
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


async def ask(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], order: Any) -> Any:
    """Send one JSON line on a worker's control connection; return its JSON answer."""
    reader, writer = conn
    writer.write(json.dumps(order).encode() + b"\n")
    await writer.drain()
    line = await reader.readline()
    if not line:
        raise RuntimeError("a worker closed its control connection")
    return json.loads(line)


async def coordinator_main(args: argparse.Namespace) -> None:
    """``tidewire-app-2w``: a redis-server and two App workers on one port (SO_REUSEPORT).

    Prints the shared port and its own control port, like a single server.  On
    the load's order it waits until the two workers' rooms hold every client
    together, has worker 1 run the broadcasts (``emit_room`` reaches worker 2
    through Redis), waits until worker 2 has fanned out every message, and
    answers worker 1's broadcast times with the members and peak RSS of both.
    """
    redis_core, *worker_cores = PINNING[args.pin_2w]
    redis, url = start_redis(redis_core, 10.0)
    workers: list[subprocess.Popen[str]] = []
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    try:
        # Hold the port (bound, not listening) until both workers listen on it too.
        with socket.socket() as hold:
            hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            hold.bind((HOST, 0))
            port = int(hold.getsockname()[1])
            me = [sys.executable, os.path.abspath(__file__)]
            common = ["--clients", str(args.clients), "--timeout", str(args.timeout)]
            for core in worker_cores:
                workers.append(
                    subprocess.Popen(
                        [
                            *("taskset", "-c", core, *me, "_server", "--kind", args.kind),
                            *("--redis", url, "--listen-port", str(port), *common),
                        ],
                        stdout=subprocess.PIPE,
                        text=True,
                        preexec_fn=die_with_parent,
                    )
                )
            for worker in workers:
                ports = json.loads(read_line(worker, 30))
                conns.append(await asyncio.open_connection(HOST, ports["control"]))
        finished = asyncio.Event()

        async def control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                order = json.loads(await reader.readline())
                status = {"op": "status"}
                async with asyncio.timeout(args.timeout):
                    while True:
                        counts = [(await ask(c, status))["members"] for c in conns]
                        if sum(counts) >= order["clients"]:
                            break
                        await asyncio.sleep(0.05)
                rss_start = sum([(await ask(c, status))["rss_peak_kib"] for c in conns])
                first = await ask(conns[0], {**order, "wait_members": 0})
                async with asyncio.timeout(args.timeout):
                    while (second := await ask(conns[1], status))["fanned"] < order["messages"]:
                        await asyncio.sleep(0.05)
                own = await ask(conns[0], status)
                reply = {
                    "sent": first["sent"],
                    "end": max(first["end"], second["last_fanout"]),
                    "members": own["members"] + second["members"],
                    "workers": [own["members"], second["members"]],
                    # When each worker made its last fan-out call, from the first broadcast.
                    "worker_s": [
                        t - first["sent"][0] for t in (first["end"], second["last_fanout"])
                    ],
                    "rss_start_kib": rss_start,
                    "rss_peak_kib": own["rss_peak_kib"] + second["rss_peak_kib"],
                }
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
                await reader.read()  # the load side closes when it is done
            finally:
                writer.close()
                finished.set()

        control_server = await asyncio.start_server(control, HOST, 0)
        control_port = control_server.sockets[0].getsockname()[1]
        print(json.dumps({"port": port, "control": control_port}), flush=True)
        try:
            async with asyncio.timeout(args.timeout * 3):
                await finished.wait()
        finally:
            control_server.close()
    finally:
        for _, writer in conns:
            writer.close()  # a worker exits when its control connection closes
        for worker in workers:
            stop_process(worker)
        redis.kill()
        redis.wait(timeout=10)


# ------------------------------------------------------------------------ load process


class Counter(asyncio.Protocol):
    """One client: upgrade, then count complete data messages, nothing else."""

    __slots__ = (
        *("load", "transport", "opened", "head", "buf", "skip", "pending", "count"),
        *("answer", "seen"),
    )

    def __init__(self, load: Load) -> None:
        """Report to ``load``."""
        self.load = load
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = load.loop.create_future()
        self.head = b""  # response bytes until the end of the 101 head
        self.buf = b""  # an incomplete frame header
        self.skip = 0  # bytes of the current frame still to come
        self.pending = False  # whether the current frame ends a data message
        self.count = 0
        self.answer: asyncio.Future[bool] | None = None  # a join waiting for its reply
        self.seen = b""  # what arrived since the join was sent

    def join(self, frame: bytes) -> asyncio.Future[bool]:
        """Send the join ``frame``; the future is True on ``joined``, False on ``error``."""
        assert self.transport is not None
        self.answer = self.load.loop.create_future()
        self.seen = b""
        self.transport.write(frame)
        return self.answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Send the upgrade request."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.load.request)

    def connection_lost(self, exc: BaseException | None) -> None:
        """Fail the open if it was pending."""
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed during the upgrade: {exc}"))

    def data_received(self, data: bytes) -> None:
        """Parse frame headers; timestamp each data message when its last byte is in."""
        now = time.monotonic()
        if not self.opened.done():
            head = self.head + data
            end = head.find(b"\r\n\r\n")
            if end < 0:
                self.head = head
                return
            if not head.startswith(b"HTTP/1.1 101"):
                self.opened.set_exception(ConnectionError(head[:80].decode("latin-1")))
                return
            self.head = b""
            self.opened.set_result(None)
            data = head[end + 4 :]
            if not data:
                return
        if self.answer is not None:  # only while joining: a few small frames
            seen = self.seen = self.seen + data
            joined = b'"type":"joined"' in seen
            if joined or b'"type":"error"' in seen:
                self.answer.set_result(joined)
                self.answer, self.seen = None, b""
        n = len(data)
        pos = self.skip
        if pos:
            if pos > n:
                self.skip = pos - n
                return
            self.skip = 0
            if self.pending:
                self._arrived(now)
        if self.buf:
            data = self.buf + data[pos:]
            self.buf = b""
            pos = 0
            n = len(data)
        while pos < n:
            if n - pos < 2:
                self.buf = data[pos:]
                return
            b0 = data[pos]
            length = data[pos + 1] & 0x7F
            if length < 126:
                end = pos + 2 + length
            elif length == 126:
                if n - pos < 4:
                    self.buf = data[pos:]
                    return
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                end = pos + 4 + length
            else:
                if n - pos < 10:
                    self.buf = data[pos:]
                    return
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                end = pos + 10 + length
            # A whole data frame (FIN, opcode < 8) of the bench's size is one of the
            # broadcast messages; anything else (an App's hello, joined reply or
            # presence count) is not counted.
            ends_message = b0 & 0x88 == 0x80 and length == self.load.size
            if end > n:
                self.skip = end - n
                self.pending = ends_message
                return
            if ends_message:
                self._arrived(now)
            pos = end

    def _arrived(self, now: float) -> None:
        i = self.count
        self.count = i + 1
        load = self.load
        if i < load.messages:
            last = load.last
            if now > last[i]:
                last[i] = now
            if i + 1 == load.messages:
                load.client_done()


class Load:
    """The load side of one run: N counters and the per-message last arrival times."""

    def __init__(self, loop: asyncio.AbstractEventLoop, clients: int, messages: int) -> None:
        """Prepare the shared upgrade request and the arrays."""
        self.loop = loop
        self.clients = clients
        self.messages = messages
        self.last = [0.0] * messages
        self.size = 0  # payload bytes of a broadcast message
        self.finished = 0
        self.join_retries = 0
        self.all_done = asyncio.Event()
        self.request = b""

    def client_done(self) -> None:
        """One more client has every message."""
        self.finished += 1
        if self.finished == self.clients:
            self.all_done.set()


async def load_main(args: argparse.Namespace) -> None:
    """Connect every client, trigger the broadcast, wait for every message, print JSON."""
    raise_fd_limit(args.clients + FD_SPARE)
    loop = asyncio.get_running_loop()
    load = Load(loop, args.clients, args.messages)
    load.size = args.size
    kind: Any = SERVERS[args.kind]
    load.request = (
        f"GET {kind.path} HTTP/1.1\r\nHost: {HOST}:{args.port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    counters: list[Counter] = []
    slow: list[Counter] = []  # --slow clients: joined, then never read again
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def open_one() -> None:
        async with gate:
            _, counter = await loop.create_connection(lambda: Counter(load), HOST, args.port)
            await counter.opened
            for attempt in range(JOIN_ATTEMPTS if kind.join_frame else 0):
                if await counter.join(kind.join_frame):
                    break
                load.join_retries += 1
                await asyncio.sleep(0.05 * (attempt + 1))
            else:
                if kind.join_frame:
                    raise RuntimeError(f"a join was refused {JOIN_ATTEMPTS} times")
            if len(slow) < args.slow:
                slow.append(counter)
            else:
                counters.append(counter)

    started = time.monotonic()
    async with asyncio.timeout(args.timeout):
        await asyncio.gather(*(open_one() for _ in range(args.clients)))
    setup = time.monotonic() - started
    load.clients = len(counters)
    await asyncio.sleep(0.5)  # let the slow clients' joins be read before they stop reading
    for counter in slow:
        assert counter.transport is not None
        counter.transport.pause_reading()

    reader, writer = await asyncio.open_connection(HOST, args.control)
    order = {
        "clients": args.clients,
        "messages": args.messages,
        "size": args.size,
        "per_turn": args.per_turn,
    }
    writer.write(json.dumps(order).encode() + b"\n")
    async with asyncio.timeout(args.timeout):
        reply = json.loads(await reader.readline())
        await load.all_done.wait()
    writer.close()

    sent: list[float] = reply["sent"]
    latencies = sorted(last - at for last, at in zip(load.last, sent, strict=True))
    total = max(load.last) - sent[0]
    result = {
        "clients": args.clients,
        "messages": args.messages,
        "members": reply["members"],
        "complete": load.finished,
        "setup_s": setup,
        "server_s": reply["end"] - sent[0],
        "total_s": total,
        "deliveries_per_s": len(counters) * args.messages / total,
        "slow": len(slow),
        "rss_start_kib": reply["rss_start_kib"],
        "rss_peak_kib": reply["rss_peak_kib"],
        "p50_ms": 1000 * percentile(latencies, 50),
        "p99_ms": 1000 * percentile(latencies, 99),
        "max_ms": 1000 * latencies[-1],
        "workers": reply.get("workers"),
        "worker_s": reply.get("worker_s"),
        "join_retries": load.join_retries,
    }
    print(json.dumps(result), flush=True)
    for counter in counters + slow:
        if counter.transport is not None:
            counter.transport.abort()


def percentile(ordered: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


# ------------------------------------------------------------------------------ driver


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """One stdout line from ``proc`` within ``timeout`` seconds, else RuntimeError."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise RuntimeError(f"no output from pid {proc.pid} within {timeout}s")
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"pid {proc.pid} exited with {proc.wait()}")
    return line


def run_once(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """One run: server on core 0, load on core 1; return the load side's result."""
    common = ["--clients", str(args.clients), "--timeout", str(args.timeout)]
    me = [sys.executable, os.path.abspath(__file__)]
    extra = ["--pin-2w", args.pin_2w] if kind in TWO_WORKER_KINDS else []
    server = subprocess.Popen(
        ["taskset", "-c", "0", *me, "_server", "--kind", kind, *common, *extra],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        ports = json.loads(read_line(server, 30))
        load = subprocess.run(
            [
                *("taskset", "-c", "1", *me, "_load", "--kind", kind, *common),
                *("--port", str(ports["port"]), "--control", str(ports["control"])),
                *("--messages", str(args.messages), "--size", str(args.size)),
                *("--per-turn", str(args.per_turn), "--slow", str(args.slow)),
            ],
            stdout=subprocess.PIPE,
            text=True,
            timeout=args.timeout * 3,
            check=True,
        )
        return dict(json.loads(load.stdout.strip().splitlines()[-1]))
    finally:
        # The server exits once the load closed its control connection; the 2-worker
        # coordinator then stops its workers and redis-server, so it gets time to.
        stop_process(server)


COLUMNS = (
    "setup_s",
    "server_s",
    "total_s",
    "deliveries_per_s",
    "p50_ms",
    "p99_ms",
    "max_ms",
    "rss_peak_kib",
    "members",
)
HEADER = (
    f"{'run':>4} {'server':<16}{'setup_s':>8}{'server_s':>9}{'total_s':>8}"
    f"{'deliveries/s':>14}{'p50_ms':>9}{'p99_ms':>9}{'max_ms':>9}{'peak_MiB':>9}{'members':>8}"
)


def row(label: str, kind: str, r: dict[str, float]) -> str:
    """One table line."""
    return (
        f"{label:>4} {kind:<16}{r['setup_s']:>8.2f}{r['server_s']:>9.3f}{r['total_s']:>8.3f}"
        f"{r['deliveries_per_s']:>14,.0f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['max_ms']:>9.1f}"
        f"{r['rss_peak_kib'] / 1024:>9.1f}{r.get('members', 0):>8.0f}"
    )


def driver(args: argparse.Namespace) -> None:
    """Run the kinds interleaved ``--repeat`` times; print each run, medians, ratios."""
    kinds: list[str] = args.server or list(SERVERS)
    print(
        f"broadcast: {args.clients} clients in one room, {args.messages} messages of "
        f"{args.size} bytes (text), {args.per_turn} broadcast(s) per loop iteration; "
        "server on core 0, "
        f"load on core 1; compression and pings off; {args.repeat} runs per server, "
        f"interleaved; python {sys.version.split()[0]}",
        flush=True,
    )
    if TWO_WORKER_KINDS.intersection(kinds):
        redis_core, core1, core2 = PINNING[args.pin_2w]
        print(
            f"tidewire-app-2w (--pin-2w {args.pin_2w}): redis-server on core {redis_core}, "
            f"worker 1 on core {core1}, worker 2 on core {core2}, load on core 1; "
            + PIN_NOTES[args.pin_2w],
            flush=True,
        )
    print(HEADER, flush=True)
    results: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    for rep in range(1, args.repeat + 1):
        for kind in kinds:
            r = run_once(kind, args)
            # Slow members may be closed by the server's slow-consumer policy.
            if r["complete"] != args.clients - args.slow or r["members"] < r["complete"]:
                raise SystemExit(f"{kind}: incomplete run {r}")
            results[kind].append(r)
            split = f"  ({r['join_retries']} joins retried)" if r["join_retries"] else ""
            if r["workers"]:
                (n1, n2), (s1, s2) = r["workers"], r["worker_s"]
                split += f"  (worker 1: {n1} clients, done {s1:.3f} s; worker 2: {n2}, {s2:.3f} s)"
            print(row(str(rep), kind, r) + split, flush=True)
    print("medians:")
    medians = {
        kind: {c: statistics.median(r[c] for r in runs) for c in COLUMNS}
        for kind, runs in results.items()
    }
    for kind, m in medians.items():
        print(row("med", kind, m))
    pairs = [(kind, BASELINE) for kind in medians if kind != BASELINE and BASELINE in medians]
    pairs += [(kind, base) for kind, base in COMPARED.items() if {kind, base} <= medians.keys()]
    for kind, against in pairs:
        m, base = medians[kind], medians[against]
        rate = m["deliveries_per_s"] / base["deliveries_per_s"]
        print(
            f"ratio {kind}/{against}: deliveries/s x{rate:.2f}"
            f", server_s x{m['server_s'] / base['server_s']:.2f}"
            f", p50 x{m['p50_ms'] / base['p50_ms']:.2f}"
            f", p99 x{m['p99_ms'] / base['p99_ms']:.2f}"
            f", max x{m['max_ms'] / base['max_ms']:.2f}"
            " (deliveries: higher is better; times: lower is better)"
        )


def main() -> None:
    """Parse the command line: the driver, or one of the two child roles."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("role", nargs="?", choices=["_server", "_load"], help=argparse.SUPPRESS)
    parser.add_argument("--server", action="append", choices=list(SERVERS), help="repeatable")
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--size", type=int, default=100, help="message bytes (>= 8)")
    parser.add_argument("--per-turn", type=int, default=1, help="broadcasts per loop iteration")
    parser.add_argument(
        "--slow", type=int, default=0, help="clients that join and then never read again"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per phase")
    parser.add_argument(
        "--pin-2w",
        choices=list(PINNING),
        default="shared",
        help="tidewire-app-2w: every server process on core 0 (shared, default) "
        "or worker 2 on core 1 with the load (split)",
    )
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--control", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--redis", help=argparse.SUPPRESS)  # a 2-worker kind's worker
    parser.add_argument("--listen-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.size < 8:
        parser.error("--size must be at least 8")
    if args.per_turn < 1 or args.messages < 1 or args.clients < 1:
        parser.error("--per-turn, --messages and --clients must be at least 1")
    if args.role == "_server" and args.kind in TWO_WORKER_KINDS and not args.redis:
        asyncio.run(coordinator_main(args))
    elif args.role == "_server":
        asyncio.run(server_main(args))
    elif args.role == "_load":
        asyncio.run(load_main(args))
    else:
        driver(args)


if __name__ == "__main__":
    main()
