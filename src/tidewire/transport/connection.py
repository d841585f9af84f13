"""WebSocket: an ``asyncio.Protocol`` driving the sans-I/O core.

Hot-path choices, each measured (bench/):
* everything one ``data_received`` delivers is parsed at once, and replies
  produced while handling it are written with one ``transport.write`` per
  loop iteration (a flush scheduled with ``call_soon``);
* ``recv()`` returns a queued message without creating a Future;
* pongs and close echoes are written by the protocol itself, so a slow
  handler never starves keepalive.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any

from tidewire.errors import (
    ConcurrencyError,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidState,
)
from tidewire.protocol.close import Close, CloseCode
from tidewire.protocol.connection import Connection, State
from tidewire.protocol.events import CloseReceived, Message, Ping, Pong
from tidewire.protocol.http import Request, Response
from tidewire.transport.options import Options

__all__ = ["WebSocket", "Data"]

logger = logging.getLogger("tidewire")

Data = str | bytes

_ids = itertools.count(1)


class WebSocket(asyncio.Protocol):
    """One WebSocket connection, server or client side.

    Use ``await ws.recv()`` or ``async for message in ws`` to read,
    ``await ws.send(message)`` to write, ``await ws.close()`` to close.
    """

    def __init__(
        self, proto: Connection, options: Options, loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        """Drive ``proto`` (a ServerProtocol, ClientProtocol or open Connection)."""
        self.proto = proto
        self.options = options
        self.loop = loop or asyncio.get_event_loop()
        self._id: int = next(_ids)
        self.transport: asyncio.Transport | None = None
        self._remote_address: Any = None
        self._request: Request | None = None
        self._response: Response | None = None
        self.path_params: dict[str, Any] = {}
        self._latency: float = 0.0
        self.messages_in = 0
        self.messages_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self._messages: deque[Data] = deque()
        self._recv_waiter: asyncio.Future[None] | None = None
        self._paused_reading = False
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._flush_scheduled = False
        self._direct_turn = -1  # the broadcast() turn this connection was last written in
        self._unflushed = 0  # bytes sent since the last scheduled flush
        self._closed = self.loop.create_future()
        self._pings: dict[bytes, tuple[asyncio.Future[float], float]] = {}
        self._keepalive: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._fail_timer: asyncio.TimerHandle | None = None
        self._sending_stream = False
        self._lost_exc: BaseException | None = None

    # ----------------------------------------------------------- public state

    @property
    def id(self) -> int:
        """A process-unique number for logs and metrics."""
        return self._id

    @property
    def remote_address(self) -> Any:
        """The peer's address as the socket reports it (``(host, port)`` for IPv4)."""
        return self._remote_address

    @property
    def request(self) -> Request | None:
        """The opening handshake request (RFC 6455 section 4.1); path, query, headers."""
        return self._request

    @property
    def response(self) -> Response | None:
        """The opening handshake response (101, or the HTTP answer given instead)."""
        return self._response

    @property
    def latency(self) -> float:
        """Round-trip time of the last answered ping in seconds; 0.0 before any."""
        return self._latency

    @property
    def state(self) -> State:
        """CONNECTING, OPEN, CLOSING or CLOSED."""
        return self.proto.state

    @property
    def subprotocol(self) -> str | None:
        """The negotiated subprotocol, or None."""
        return getattr(self.proto, "subprotocol", None)

    @property
    def extensions(self) -> list[Any]:
        """The negotiated extensions (e.g. permessage-deflate)."""
        return list(self.proto.extensions)

    @property
    def close_code(self) -> int | None:
        """The close code received (1005 none given, 1006 abnormal); None while open."""
        if self.proto.state is not State.CLOSED and self.proto.close_rcvd is None:
            return None
        return self.proto.close_code

    @property
    def close_reason(self) -> str | None:
        """The close reason received; None while open."""
        if self.close_code is None:
            return None
        return self.proto.close_reason

    @property
    def buffered_amount(self) -> int:
        """Bytes accepted by send(), send_nowait() or broadcast() but not yet written to the socket.

        The transport's write buffer plus the frames waiting for the flush
        scheduled for this loop iteration, like the browser's
        ``WebSocket.bufferedAmount``.  A broadcaster reads it to find slow
        receivers: it grows while the peer does not read.
        """
        transport = self.transport
        buffered = transport.get_write_buffer_size() if transport is not None else 0
        return buffered + self.proto.pending_size

    # ------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Called by asyncio when the TCP connection is up."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._remote_address = transport.get_extra_info("peername")
        transport.set_write_buffer_limits(
            self.options.write_high_water, self.options.write_low_water
        )

    def data_received(self, data: bytes) -> None:
        """Feed the core, queue messages, write what it produced."""
        proto = self.proto
        self.bytes_in += len(data)
        proto.receive_data(data)
        self._process_received()

    def _process_received(self) -> None:
        """Take the core's events, fail it if it found an error, write what it produced."""
        proto = self.proto
        events = proto.events_received()
        if events:
            self._handle_events(events)
        if proto.failure is not None and proto.close_sent is None:
            self._maybe_fail()
        self._flush()

    def _handle_events(self, events: list[Any]) -> None:
        messages = self._messages
        for event in events:
            if type(event) is Message:
                messages.append(event.data)
                self.messages_in += 1
            elif type(event) is Ping:
                pass  # the core already queued the pong
            elif type(event) is Pong:
                self._pong(event.data)
            elif type(event) is CloseReceived:
                self._close_received()
        waiter = self._recv_waiter
        if waiter is not None and messages:
            self._recv_waiter = None
            if not waiter.done():
                waiter.set_result(None)
        if (
            len(messages) >= self.options.max_queue
            and not self._paused_reading
            and self.proto.close_sent is None  # closing: the peer's close must get in
        ):
            self._paused_reading = True
            assert self.transport is not None
            self.transport.pause_reading()

    def _close_received(self) -> None:
        self._wake_reader()

    def eof_received(self) -> bool | None:
        """The peer half-closed: treat as the end of the connection."""
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        """TCP is gone: wake everyone waiting, cancel timers."""
        self._lost_exc = exc
        self.proto.receive_eof()
        for timer in (self._keepalive, self._close_timer, self._fail_timer):
            if timer is not None:
                timer.cancel()
        self._wake_reader()
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()
        closed = self._closed_exc()
        for fut, _ in self._pings.values():
            if not fut.done():
                fut.set_exception(closed)
                fut.exception()  # mark retrieved: nobody may be awaiting a keepalive ping
        self._pings.clear()
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        """asyncio: the write buffer went above the high-water mark."""
        self._write_paused = True

    def resume_writing(self) -> None:
        """asyncio: the write buffer drained below the low-water mark."""
        self._write_paused = False
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()

    # ---------------------------------------------------------------- writing

    def _flush(self) -> None:
        data = self.proto.data_to_send()
        transport = self.transport
        if data and transport is not None and not transport.is_closing():
            self.bytes_out += len(data)
            transport.write(data)
        if self.proto.close_expected():
            self._close_transport()

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self._unflushed = 0
        self._flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._scheduled_flush)

    def _close_transport(self, *, hard: bool = False) -> None:
        """Close TCP now (server, or ``hard`` after failing) or soon (client, clean close)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not hard and self.proto.side.value == "client" and self.proto.state is not State.CLOSED:
            # RFC 6455 7.1.1: the server closes TCP first; give it close_timeout.
            if self._close_timer is None:
                timeout = self.options.close_timeout
                self._close_timer = self.loop.call_later(
                    timeout if timeout is not None else 10.0, self._abort
                )
            return
        transport.close()
        timeout = self.options.close_timeout
        if timeout is not None and self._close_timer is None:
            self._close_timer = self.loop.call_later(timeout, self._abort)

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    async def send(
        self, message: Data | Iterable[Data] | AsyncIterable[Data], *, compress: bool | None = None
    ) -> None:
        """Send a text (``str``) or binary (``bytes``) message.

        An iterable or async iterable of str or bytes is sent as one message in
        fragments, one per item.  ``compress`` overrides the compression
        threshold for this message.  Waits while the write buffer is above
        ``write_high_water``.  Raises ConnectionClosed once closing.
        """
        if not isinstance(message, str | bytes | bytearray | memoryview):
            if isinstance(message, dict):
                raise TypeError("send() takes str or bytes; encode dicts with json.dumps")
            self._check_sendable()
            await self._send_fragments(message, compress)
            return
        self.send_nowait(message, compress=compress)
        if self._write_paused:
            await self._drain()

    def send_nowait(
        self, message: str | bytes | bytearray | memoryview, *, compress: bool | None = None
    ) -> None:
        """Queue a text (``str``) or binary (``bytes``) message without waiting.

        The frame is written with this loop iteration's flush, or at once when
        what is pending would pass ``write_high_water`` (so ``pause_writing``
        still fires); nothing waits for the buffer to drain: a caller that
        keeps its own bounded queue watches :attr:`buffered_amount` instead.
        ``compress`` overrides the compression threshold for this message.
        Raises ConnectionClosed once closing, like :meth:`send`, and
        ConcurrencyError while a fragmented message is being sent.
        """
        self._check_sendable()
        proto = self.proto
        if isinstance(message, str):
            proto.send_text(message, compress=compress)
        elif isinstance(message, bytes | bytearray | memoryview):
            proto.send_binary(message, compress=compress)
        else:
            raise TypeError(f"send_nowait() takes str or bytes, not {type(message).__name__}")
        self._queued(len(message))

    def _check_sendable(self) -> None:
        """Raise ConnectionClosed once closing, ConcurrencyError during a fragmented send."""
        if self.proto.state is not State.OPEN:
            raise self._closed_exc()
        if self._sending_stream:
            raise ConcurrencyError("a fragmented message is being sent")

    def _queued(self, size: int, batch: list[WebSocket] | None = None) -> None:
        """Account one message of ``size`` bytes the core just framed, and get it written.

        With ``batch`` (a broadcast), a connection that needs a flush scheduled
        is appended to it instead, and the caller schedules one callback that
        flushes the whole batch: one ``call_soon`` per receiver (a Handle and a
        context copy each) took about as long as the writes themselves in a
        2,000-member room (cProfile, bench/broadcast.py).
        """
        self.messages_out += 1
        # Batched writes must not hide backpressure: once what waits for the
        # scheduled flush would take the transport past high water, write now so
        # pause_writing() fires and this send() waits (else a loop of sends that
        # never suspends queues without bound and starves the event loop).
        self._unflushed += size
        transport = self.transport
        if (
            transport is not None
            and self._unflushed + transport.get_write_buffer_size() > self.options.write_high_water
        ):
            self._unflushed = 0
            self._flush()
        elif batch is None:
            self._schedule_flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            batch.append(self)

    async def _send_fragments(
        self, message: Iterable[Data] | AsyncIterable[Data], compress: bool | None
    ) -> None:
        self._sending_stream = True
        try:
            first = True
            kind: type | None = None
            prev: Data | None = None

            async def items() -> AsyncIterator[Data]:
                if isinstance(message, AsyncIterable):
                    async for item in message:
                        yield item
                else:
                    for item in message:
                        yield item

            async for item in items():
                if kind is None:
                    kind = type(item) if isinstance(item, str) else bytes
                elif not isinstance(item, str if kind is str else bytes | bytearray):
                    raise TypeError("fragments of one message must all be str or all bytes")
                if prev is not None:
                    self._send_piece(prev, first, False, compress)
                    first = False
                    self._flush()
                    if self._write_paused:
                        await self._drain()
                prev = item
            if prev is None:
                prev = b""
                first = True
            self._send_piece(prev, first, True, compress)
            self.messages_out += 1
            self._flush()
        finally:
            self._sending_stream = False

    def _send_piece(self, item: Data, first: bool, fin: bool, compress: bool | None) -> None:
        if self.proto.state is not State.OPEN:
            raise self._closed_exc()
        if first:
            if isinstance(item, str):
                self.proto.send_text(item, fin=fin, compress=compress)
            else:
                self.proto.send_binary(item, fin=fin, compress=compress)
        else:
            self.proto.send_continuation(item, fin=fin)

    @property
    def write_paused(self) -> bool:
        """Whether the transport's write buffer is above ``write_high_water``."""
        return self._write_paused

    async def drain(self) -> None:
        """Wait until the write buffer is below ``write_low_water`` (or the connection closed)."""
        await self._drain()

    async def _drain(self) -> None:
        while self._write_paused and self.proto.state is not State.CLOSED:
            waiter = self.loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter

    # ---------------------------------------------------------------- reading

    async def recv(self) -> Data:
        """Return the next message: ``str`` for text, ``bytes`` for binary.

        Raises ConnectionClosedOK / ConnectionClosedError once the connection
        is closed and every message received before the close was read.
        """
        messages = self._messages
        while not messages:
            if self._recv_waiter is not None:
                raise ConcurrencyError("another coroutine is already waiting in recv()")
            if self.proto.failure is not None and self.proto.close_sent is None:
                self._fail_now()
            if (
                self.proto.close_rcvd is not None
                or self.proto.state is State.CLOSED
                or self.proto.close_sent is not None
            ):
                if self.proto.state is not State.CLOSED:
                    await asyncio.shield(self._closed)
                raise self._closed_exc()
            waiter = self.loop.create_future()
            self._recv_waiter = waiter
            try:
                await waiter
            finally:
                self._recv_waiter = None
        message = messages.popleft()
        if self._paused_reading and len(messages) <= self.options.max_queue // 4:
            self._paused_reading = False
            if self.transport is not None:
                self.transport.resume_reading()
        return message

    def __aiter__(self) -> AsyncIterator[Data]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Data]:
        try:
            while True:
                yield await self.recv()
        except ConnectionClosedOK:
            return

    def _wake_reader(self) -> None:
        waiter = self._recv_waiter
        if waiter is not None:
            self._recv_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # ------------------------------------------------------ failing, closing

    def _maybe_fail(self) -> None:
        """A protocol error follows valid messages: let the handler see them first."""
        if not self._messages:
            self._fail_now()
        elif self._fail_timer is None:
            self._fail_timer = self.loop.call_later(self.options.fail_delay, self._fail_now)

    def _fail_now(self) -> None:
        failure = self.proto.failure
        if failure is None or self.proto.close_sent is not None:
            return
        self._messages.clear()
        logger.debug("failing connection %s: %s", self.id, failure)
        self.proto.fail(failure.close_code, str(failure))
        self._flush()
        self._wake_reader()

    def _closed_exc(self) -> ConnectionClosed:
        proto = self.proto
        rcvd, sent = proto.close_rcvd, proto.close_sent
        code = proto.close_code
        reason = proto.close_reason
        ok = (
            rcvd is not None
            and sent is not None
            and rcvd.code in (1000, 1001, 1005)
            and sent.code in (1000, 1001, 1005)
        )
        cls = ConnectionClosedOK if ok else ConnectionClosedError
        return cls(code, reason, rcvd, sent)

    async def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Run the closing handshake, waiting at most ``close_timeout``; idempotent."""
        proto = self.proto
        if proto.state is State.OPEN:
            proto.send_close(code, Close.truncate_reason(reason))
            self._flush()
            self._read_until_close()
        elif proto.state is State.CONNECTING and self.transport is not None:
            self.transport.abort()
        await self.wait_closed_within(self.options.close_timeout)

    def _read_until_close(self) -> None:
        """Resume reading paused by max_queue: the peer's close frame must get in."""
        if self._paused_reading:
            self._paused_reading = False
            if self.transport is not None:
                self.transport.resume_reading()

    async def wait_closed_within(self, timeout: float | None) -> None:
        """Wait for TCP to close; abort it after ``timeout`` seconds."""
        if self._closed.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._closed), timeout)
        except TimeoutError:
            self._abort()
            await asyncio.shield(self._closed)

    async def wait_closed(self) -> None:
        """Wait until the TCP connection is closed."""
        await asyncio.shield(self._closed)

    def fail(self, code: int, reason: str = "") -> None:
        """Fail the connection now with ``code`` (no waiting for the handler)."""
        if self.proto.close_sent is None and self.proto.state is not State.CLOSED:
            self.proto.fail(code, reason)
            self._flush()
            self._close_transport(hard=True)

    # -------------------------------------------------------------- keepalive

    async def ping(self, data: bytes | None = None) -> float:
        """Send a ping and return the round-trip time in seconds once the pong arrives."""
        if self.proto.state is not State.OPEN:
            raise self._closed_exc()
        if data is None:
            data = os.urandom(4)
            while data in self._pings:
                data = os.urandom(4)
        elif data in self._pings:
            raise InvalidState("a ping with this payload is already waiting for its pong")
        fut: asyncio.Future[float] = self.loop.create_future()
        self._pings[data] = (fut, time.monotonic())
        self.proto.send_ping(data)
        self._flush()
        return await fut

    def _pong(self, data: bytes) -> None:
        if data not in self._pings:
            return
        now = time.monotonic()
        # A pong acknowledges its ping and every earlier one (section 5.5.3).
        for key in list(self._pings):
            fut, sent = self._pings.pop(key)
            if not fut.done():
                fut.set_result(now - sent)
            if key == data:
                self._latency = now - sent
                break

    def start_keepalive(self) -> None:
        """Start the ping timer (ping_interval); a missed pong fails with 1011."""
        if self.options.ping_interval is not None:
            self._keepalive = self.loop.call_later(self.options.ping_interval, self._send_keepalive)

    def _send_keepalive(self) -> None:
        if self.proto.state is not State.OPEN:
            return
        data = os.urandom(4)
        fut: asyncio.Future[float] = self.loop.create_future()
        self._pings[data] = (fut, time.monotonic())
        self.proto.send_ping(data)
        self._flush()
        timeout = self.options.ping_timeout
        if timeout is not None:
            self._keepalive = self.loop.call_later(timeout, self._check_pong, fut)
        else:
            self._keepalive = self.loop.call_later(
                self.options.ping_interval or 20.0, self._send_keepalive
            )

    def _check_pong(self, fut: asyncio.Future[float]) -> None:
        if not fut.done():
            fut.cancel()
            logger.info("connection %s: no pong within %ss", self.id, self.options.ping_timeout)
            self.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
            return
        interval = self.options.ping_interval or 20.0
        remaining = max(0.0, interval - (self.options.ping_timeout or 0.0))
        self._keepalive = self.loop.call_later(remaining, self._send_keepalive)
