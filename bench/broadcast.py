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

File descriptors: each of the server and load processes holds one socket per client
plus a few; the soft RLIMIT_NOFILE is raised to the hard one (20,000 here) and a run
that would not fit is refused.

Usage::

    python bench/broadcast.py                      # 10,000 clients, both servers, 3 runs each
    python bench/broadcast.py --clients 1000 --repeat 5 --server tidewire
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import select
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

    def __init__(self) -> None:
        """An App with no rate limit or idle timeout (the load side only listens)."""
        from tidewire.realtime import App

        self.app = App(rate_limits=None, idle_timeout=None, max_connections=None)
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


#: Server kinds by --server name.  Interleaved in this order within each repeat.
SERVERS: dict[str, Callable[[], RoomServer]] = {
    "tidewire": TidewireRoom,
    "websockets": WebsocketsRoom,
    "tidewire-app": AppRoom,
}
#: The kind the others are compared against in the ratio lines.
BASELINE = "websockets"


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
    """Serve the room and a control port; broadcast when the load side says so."""
    raise_fd_limit(args.clients + FD_SPARE)
    room = SERVERS[args.kind]()
    port = await room.start(HOST)
    finished = asyncio.Event()

    async def control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            order = json.loads(await reader.readline())
            clients, messages = order["clients"], make_messages(order["messages"], order["size"])
            per_turn = order["per_turn"]
            async with asyncio.timeout(args.timeout):
                while room.members() < clients:
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
            reply = {
                "sent": sent,
                "end": end,
                "members": room.members(),
                "rss_start_kib": rss_start,
                "rss_peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
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
        await room.stop()


# ------------------------------------------------------------------------ load process


class Counter(asyncio.Protocol):
    """One client: upgrade, then count complete data messages, nothing else."""

    __slots__ = ("load", "transport", "opened", "head", "buf", "skip", "pending", "count")

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
            if kind.join_frame:
                assert counter.transport is not None
                counter.transport.write(kind.join_frame)
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
    server = subprocess.Popen(
        ["taskset", "-c", "0", *me, "_server", "--kind", kind, *common],
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
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=10)


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
    f"{'run':>4} {'server':<12}{'setup_s':>8}{'server_s':>9}{'total_s':>8}"
    f"{'deliveries/s':>14}{'p50_ms':>9}{'p99_ms':>9}{'max_ms':>9}{'peak_MiB':>9}{'members':>8}"
)


def row(label: str, kind: str, r: dict[str, float]) -> str:
    """One table line."""
    return (
        f"{label:>4} {kind:<12}{r['setup_s']:>8.2f}{r['server_s']:>9.3f}{r['total_s']:>8.3f}"
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
    print(HEADER, flush=True)
    results: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    for rep in range(1, args.repeat + 1):
        for kind in kinds:
            r = run_once(kind, args)
            # Slow members may be closed by the server's slow-consumer policy.
            if r["complete"] != args.clients - args.slow or r["members"] < r["complete"]:
                raise SystemExit(f"{kind}: incomplete run {r}")
            results[kind].append(r)
            print(row(str(rep), kind, r), flush=True)
    print("medians:")
    medians = {
        kind: {c: statistics.median(r[c] for r in runs) for c in COLUMNS}
        for kind, runs in results.items()
    }
    for kind, m in medians.items():
        print(row("med", kind, m))
    if BASELINE in medians:
        base = medians[BASELINE]
        for kind, m in medians.items():
            if kind == BASELINE:
                continue
            rate = m["deliveries_per_s"] / base["deliveries_per_s"]
            print(
                f"ratio {kind}/{BASELINE}: deliveries/s x{rate:.2f}"
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
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--control", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.size < 8:
        parser.error("--size must be at least 8")
    if args.per_turn < 1 or args.messages < 1 or args.clients < 1:
        parser.error("--per-turn, --messages and --clients must be at least 1")
    if args.role == "_server":
        asyncio.run(server_main(args))
    elif args.role == "_load":
        asyncio.run(load_main(args))
    else:
        driver(args)


if __name__ == "__main__":
    main()
