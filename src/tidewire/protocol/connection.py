"""The sans-I/O WebSocket connection (RFC 6455 sections 5-7, RFC 7692 section 6).

Bytes go in through :meth:`Connection.receive_data`, events come out of
:meth:`Connection.events_received`, and frames to write come out of
:meth:`Connection.data_to_send`.  No I/O, no clocks: the driver owns both.

Peer errors never raise out of ``receive_data``: the connection records the
:class:`~tidewire.errors.ProtocolError` in :attr:`Connection.failure` and fails
itself (RFC 6455 section 7.1.7), queueing a close frame with the error's code.
With ``defer_failure=True`` it stops parsing, keeps the valid events that came
before the bad bytes, and waits for the driver to call :meth:`Connection.fail`
once those events have been handled, so an echo of a valid message is not cut
off by the close frame that follows it.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Protocol, cast

from tidewire._types import BytesLike
from tidewire.errors import InvalidState, PayloadTooBig, ProtocolError
from tidewire.protocol._accel import (
    Assembler,
    apply_mask,
    parse_frames,
    utf8_check,
)
from tidewire.protocol.close import MAX_REASON_BYTES, Close, CloseCode
from tidewire.protocol.events import CloseReceived, Event, Message, Ping, Pong
from tidewire.protocol.frames import MAX_CONTROL_PAYLOAD, MaskSource, Opcode, frame_header

__all__ = [
    "Side",
    "State",
    "Connection",
    "MessageCodec",
    "SharedCodec",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_FRAME_SIZE",
    "is_sendable_code",
]

#: 1 MiB: the anchors' choice (websockets, ws use 1 MiB / 100 MiB); large enough
#: for chat and JSON RPC, small enough that 1,000 connections cannot pin a GiB.
DEFAULT_MAX_MESSAGE_SIZE = 1 << 20
#: None: frames are bounded by the message limit, which is what users reason about.
DEFAULT_MAX_FRAME_SIZE: int | None = None

_unpack_h = struct.Struct("!H").unpack_from
_unpack_q = struct.Struct("!Q").unpack_from


class Side(enum.Enum):
    """Which end of the connection this is; it decides the masking rules (section 5.1)."""

    SERVER = "server"
    CLIENT = "client"


class State(enum.IntEnum):
    """Connection states (RFC 6455 sections 4 and 7)."""

    CONNECTING = 0
    OPEN = 1
    CLOSING = 2
    CLOSED = 3


class MessageCodec(Protocol):
    """What the connection needs from a negotiated permessage-deflate extension."""

    name: str
    rsv1: bool

    def inflate(self, data: bytes, *, fin: bool, max_size: int | None, already: int = 0) -> bytes:
        """Decompress part of a message; raise PayloadTooBig past ``max_size``."""
        ...

    def deflate(self, data: bytes, *, fin: bool = True) -> bytes:
        """Compress a message or one fragment of it."""
        ...

    def should_compress(self, size: int) -> bool:
        """Whether a message of ``size`` bytes is worth compressing."""
        ...


class SharedCodec(Protocol):
    """What an encode-once broadcast needs from a codec: compressing without its state.

    Optional: a codec without these methods is always driven per connection.
    """

    def shared_key(self) -> Hashable | None:
        """Equal for codecs whose ``deflate_shared`` output is interchangeable; None if none is."""
        ...

    def deflate_shared(self, data: bytes) -> bytes:
        """Compress one whole message independently of this codec's history and state."""
        ...


def is_sendable_code(code: int) -> bool:
    """True when an endpoint may put ``code`` in a close frame it sends (section 7.4.1)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


_TEXT = 1
_BINARY = 2
#: Single-frame messages at least this large are unmasked into one buffer
#: allocated up front, instead of joining per-read pieces (one copy fewer).
_ASSEMBLE_MIN = 64 * 1024


class Connection:
    """One WebSocket connection's protocol state, after the opening handshake."""

    __slots__ = (
        "side",
        "state",
        "max_message_size",
        "max_frame_size",
        "deliver_fragments",
        "defer_failure",
        "extensions",
        "failure",
        "close_rcvd",
        "close_sent",
        "eof_received",
        "_codec",
        "_buf",
        "_events",
        "_out",
        "_expect_mask",
        "_masks",
        "_discard",
        "_msg_op",
        "_msg_chunks",
        "_msg_size",
        "_msg_deflated",
        "_utf8",
        "_f_rem",
        "_asm",
        "_f_fin",
        "_f_mask",
        "_f_off",
        "_f_op",
        "_ctl_op",
        "_send_op",
        "_send_deflated",
    )

    def __init__(
        self,
        side: Side,
        *,
        state: State = State.OPEN,
        max_message_size: int | None = DEFAULT_MAX_MESSAGE_SIZE,
        max_frame_size: int | None = DEFAULT_MAX_FRAME_SIZE,
        extensions: Sequence[Any] = (),
        deliver_fragments: bool = False,
        defer_failure: bool = False,
    ) -> None:
        """Create the protocol state for ``side``.

        ``max_message_size`` bounds a message after decompression (None: no
        limit); ``max_frame_size`` bounds one frame's payload.  ``extensions``
        are the negotiated extensions; one whose name is permessage-deflate
        claims RSV1.  ``deliver_fragments`` yields each data frame as a
        :class:`Message` piece with ``fin`` telling whether the message ends.
        """
        self.side = side
        self.state = state
        self.max_message_size = max_message_size
        self.max_frame_size = max_frame_size
        self.deliver_fragments = deliver_fragments
        self.defer_failure = defer_failure
        self.extensions = list(extensions)
        self.failure: ProtocolError | None = None
        self.close_rcvd: Close | None = None
        self.close_sent: Close | None = None
        self.eof_received = False
        codec: MessageCodec | None = None
        for ext in self.extensions:
            if getattr(ext, "rsv1", False):
                codec = ext
        self._codec = codec
        self._buf = bytearray()
        self._events: list[Event] = []
        self._out: list[bytes] = []
        self._expect_mask = side is Side.SERVER
        self._masks = MaskSource() if side is Side.CLIENT else None
        self._discard = False
        # message being received
        self._msg_op = 0
        self._msg_chunks: list[bytes] = []
        self._msg_size = 0
        self._msg_deflated = False
        self._utf8 = 0
        # data frame whose payload is still arriving
        self._f_rem = 0
        self._asm: Assembler | None = None
        self._f_fin = False
        self._f_mask: bytes | None = None
        self._f_off = 0
        self._f_op = 0
        self._ctl_op = 0
        # message being sent in fragments
        self._send_op = 0
        self._send_deflated = False

    # ------------------------------------------------------------------ receiving

    def receive_data(self, data: BytesLike) -> None:
        """Feed bytes read from the network; never raises for bad peer input."""
        if self._discard or not data:
            return
        buf = self._buf
        if buf:
            buf += data
            src: bytes | bytearray = buf
        else:
            src = data if isinstance(data, bytes) else bytes(data)
        try:
            pos = self._parse(src)
        except ProtocolError as exc:
            self._protocol_error(exc)
            buf.clear()
            return
        if src is buf:
            if pos:
                del buf[:pos]
        elif pos < len(src):
            buf += src[pos:]

    def receive_eof(self) -> None:
        """The peer closed the TCP connection (or it was lost)."""
        self.eof_received = True
        self._discard = True
        self.state = State.CLOSED

    def events_received(self) -> list[Event]:
        """Return and forget the events parsed so far, in order."""
        events = self._events
        if events:
            self._events = []
        return events

    def data_to_send(self) -> bytes:
        """Return and forget the bytes to write to the network."""
        out = self._out
        if not out:
            return b""
        self._out = []
        return out[0] if len(out) == 1 else b"".join(out)

    def close_expected(self) -> bool:
        """True when the TCP connection should now be closed (section 7.1.1).

        The server closes TCP first once close frames went both ways or the
        connection was failed; the client waits for the server to do it and
        closes itself only after a timeout (the driver's job).
        """
        return self.state is State.CLOSED or (
            self.close_sent is not None
            and (self.close_rcvd is not None or self.failure is not None)
        )

    @property
    def close_code(self) -> int:
        """The close code received, 1005 if the close frame had none, 1006 if none came."""
        if self.close_rcvd is not None:
            return self.close_rcvd.code
        return CloseCode.ABNORMAL_CLOSURE

    @property
    def close_reason(self) -> str:
        """The close reason received, or ``""``."""
        return self.close_rcvd.reason if self.close_rcvd is not None else ""

    def _protocol_error(self, exc: ProtocolError) -> None:
        self.failure = exc
        self._discard = True
        if not self.defer_failure:
            self.fail(exc.close_code, str(exc))

    def _parse(self, buf: bytes | bytearray) -> int:
        """Consume whole frames, and the payload of a data frame as it arrives."""
        pos = 0
        end = len(buf)
        events = self._events
        expect_mask = self._expect_mask
        while pos < end:
            if self._f_rem:
                take = min(self._f_rem, end - pos)
                chunk = buf[pos : pos + take]
                pos += take
                self._f_rem -= take
                if self._asm is not None:
                    self._assemble(chunk, take)
                else:
                    mask = self._f_mask
                    if mask is not None:
                        chunk = apply_mask(chunk, mask, self._f_off)
                        self._f_off = (self._f_off + take) & 3
                    elif not isinstance(chunk, bytes):
                        chunk = bytes(chunk)
                    self._data(chunk, self._f_fin and not self._f_rem, not self._f_rem)
                if self._discard:
                    return pos
                continue
            if not self._msg_op and not self.deliver_fragments:
                # The common case, in C when built: whole unfragmented messages.
                items, pos = parse_frames(buf, pos, expect_mask, self._simple_limit())
                if items:
                    events.extend(map(Message, items))
            if end - pos < 2:
                break
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            hlen = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = _unpack_h(buf, pos + 2)[0]
                hlen = 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = _unpack_q(buf, pos + 2)[0]
                if length >> 63:
                    raise ProtocolError("frame length has the most significant bit set")
                hlen = 10
            masked = b1 & 0x80
            if masked:
                hlen += 4
            if end - pos < hlen:
                break
            if bool(masked) is not expect_mask:
                raise ProtocolError(
                    "unmasked frame from client" if expect_mask else "masked frame from server"
                )
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            rsv = b0 & 0x70
            mask_key = bytes(buf[pos + hlen - 4 : pos + hlen]) if masked else None
            if opcode >= 8:
                self._check_control(opcode, fin, rsv, length)
                if end - pos - hlen < length:
                    break  # control frames are at most 125 bytes: wait for all of it
                start = pos + hlen
                pos = start + length
                payload = buf[start:pos]
                if mask_key is not None:
                    payload = apply_mask(payload, mask_key)
                self._control(opcode, bytes(payload))
                if self._discard:
                    return pos
                continue
            self._check_data(opcode, fin, rsv, length)
            start = pos + hlen
            if opcode:
                self._msg_op = opcode
                self._msg_deflated = bool(rsv)
                self._msg_size = 0
                self._utf8 = 0
                if fin and not rsv and length >= _ASSEMBLE_MIN and not self.deliver_fragments:
                    # A large single-frame message: unmask straight into its final buffer.
                    self._asm = Assembler(length, opcode == _TEXT)
            self._f_rem = length
            self._f_fin = bool(fin)
            self._f_mask = mask_key
            self._f_off = 0
            pos = start
            if length == 0:
                self._data(b"", self._f_fin, True)
                if self._discard:
                    return pos
        return pos

    def _check_control(self, opcode: int, fin: int, rsv: int, length: int) -> None:
        if opcode > 0xA:
            raise ProtocolError(f"reserved opcode {opcode:#x}")
        if rsv:
            raise ProtocolError(f"RSV bits {rsv >> 4:#05b} set on a control frame")
        if not fin:
            raise ProtocolError("fragmented control frame")
        if length > MAX_CONTROL_PAYLOAD:
            raise ProtocolError(f"control frame payload of {length} bytes > 125")

    def _check_data(self, opcode: int, fin: int, rsv: int, length: int) -> None:
        if opcode > 2:
            raise ProtocolError(f"reserved opcode {opcode:#x}")
        if rsv:
            if rsv != 0x40 or self._codec is None:
                raise ProtocolError(f"RSV bits {rsv >> 4:#05b} set without an extension")
            if opcode == 0:
                raise ProtocolError("RSV1 set on a continuation frame")
        if opcode == 0:
            if not self._msg_op:
                raise ProtocolError("continuation frame without a message to continue")
        elif self._msg_op:
            raise ProtocolError("new data frame while a fragmented message is in progress")
        if self.max_frame_size is not None and length > self.max_frame_size:
            raise PayloadTooBig("frame", self.max_frame_size, length)
        limit = self.max_message_size
        if limit is not None:
            deflated = bool(rsv) if opcode else self._msg_deflated
            size = length + (self._msg_size if opcode == 0 else 0)
            if not deflated and size > limit:
                raise PayloadTooBig("message", limit, size)

    def _simple_limit(self) -> int:
        limit = self.max_message_size
        frame_limit = self.max_frame_size
        if frame_limit is not None and (limit is None or frame_limit < limit):
            limit = frame_limit
        return -1 if limit is None else limit

    def _assemble(self, chunk: bytes | bytearray, take: int) -> None:
        """Unmask a piece of a large single-frame message into its final object."""
        asm = self._asm
        assert asm is not None
        if not asm.feed(chunk, self._f_mask, self._f_off):
            raise ProtocolError("invalid UTF-8 in text message", 1007)
        self._f_off = (self._f_off + take) & 3
        if not self._f_rem:
            self._asm = None
            self._msg_op = 0
            data = asm.finish()
            if data is None:
                raise ProtocolError("text message ends inside a UTF-8 sequence", 1007)
            self._events.append(Message(data))

    def _data(self, chunk: bytes, msg_fin: bool, frame_done: bool) -> None:
        """Take one piece of a data frame's payload (already unmasked)."""
        if self._msg_deflated:
            codec = self._codec
            assert codec is not None
            chunk = codec.inflate(
                chunk, fin=msg_fin, max_size=self.max_message_size, already=self._msg_size
            )
        self._msg_size += len(chunk)
        text = self._msg_op == _TEXT
        if text and chunk:
            state = utf8_check(chunk, self._utf8)
            if state < 0:
                raise ProtocolError("invalid UTF-8 in text message", 1007)
            self._utf8 = state
        if chunk:
            self._msg_chunks.append(chunk)
        if msg_fin:
            if text and self._utf8:
                raise ProtocolError("text message ends inside a UTF-8 sequence", 1007)
            chunks = self._msg_chunks
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            self._msg_chunks = []
            self._msg_op = 0
            self._events.append(Message(data.decode() if text else data))
        elif frame_done and self.deliver_fragments:
            self._emit_piece(text)

    def _emit_piece(self, text: bool) -> None:
        chunks = self._msg_chunks
        data = b"".join(chunks)
        if text:
            keep = self._utf8 >> 24
            self._msg_chunks = [data[len(data) - keep :]] if keep else []
            self._events.append(Message(data[: len(data) - keep].decode(), fin=False))
        else:
            self._msg_chunks = []
            self._events.append(Message(data, fin=False))

    def _control(self, opcode: int, payload: bytes) -> None:
        if opcode == Opcode.PING:
            if self.close_sent is None:
                self._out.append(self._frame(Opcode.PONG, payload))
            self._events.append(Ping(payload))
        elif opcode == Opcode.PONG:
            self._events.append(Pong(payload))
        elif opcode == Opcode.CLOSE:
            close = Close.parse(payload)
            self.close_rcvd = close
            self._discard = True
            if self.close_sent is None:
                self.close_sent = close
                self._out.append(self._frame(Opcode.CLOSE, close.serialize()))
            if self.state is State.OPEN:
                self.state = State.CLOSING
            self._events.append(CloseReceived(close.code, close.reason))
        else:
            raise ProtocolError(f"reserved opcode {opcode:#x}")

    # -------------------------------------------------------------------- sending

    def _frame(self, opcode: int, payload: bytes, fin: bool = True, rsv1: bool = False) -> bytes:
        masks = self._masks
        if masks is None:
            return frame_header(opcode, len(payload), fin=fin, rsv1=rsv1) + payload
        mask = masks.next()
        return (
            frame_header(opcode, len(payload), fin=fin, rsv1=rsv1, masked=True)
            + mask
            + apply_mask(payload, mask)
        )

    def _check_open(self) -> None:
        if self.state is not State.OPEN:
            raise InvalidState(f"cannot send data: connection is {self.state.name}")

    def _send_data(self, opcode: int, data: bytes, fin: bool, compress: bool | None) -> None:
        self._check_open()
        if opcode:
            if self._send_op:
                raise InvalidState("a fragmented message is being sent; continue it first")
            codec = self._codec
            deflated = codec is not None and (
                compress if compress is not None else codec.should_compress(len(data))
            )
            self._send_deflated = deflated
        else:
            if not self._send_op:
                raise InvalidState("no fragmented message to continue")
            deflated = self._send_deflated
        self._send_op = 0 if fin else (opcode or self._send_op)
        if deflated:
            assert self._codec is not None
            payload = self._codec.deflate(data, fin=fin)
            self._out.append(self._frame(opcode, payload, fin, rsv1=bool(opcode)))
        else:
            self._out.append(self._frame(opcode, data, fin))

    @property
    def sending_fragments(self) -> bool:
        """True between the first and the last fragment of a message being sent (section 5.4)."""
        return bool(self._send_op)

    @property
    def pending_size(self) -> int:
        """Bytes queued for :meth:`data_to_send` and not taken yet."""
        return sum(map(len, self._out))

    # ------------------------------------------------- frames shared by many connections

    def share_key(self, size: int, compress: bool | None = None) -> Hashable | None:
        """What this connection's frame for a ``size``-byte message depends on, if shareable.

        Connections with equal keys accept the same frame bytes, so an
        encode-once broadcast builds that frame once per key with
        :meth:`frame_for_sharing` and queues it on each with :meth:`send_frame`.
        ``()`` stands for a plain frame: unmasked and uncompressed.  None means
        only this connection can frame the message: a client masks every frame
        with a fresh key (RFC 6455 section 5.3), and a compressor with context
        takeover depends on every message sent before (RFC 7692 section 7.1.1).
        ``compress`` overrides the compression threshold, as for :meth:`send_text`.
        """
        if self._masks is not None:
            return None
        codec = self._codec
        if codec is None or not (compress if compress is not None else codec.should_compress(size)):
            return ()
        shared = cast("Callable[[], Hashable | None] | None", getattr(codec, "shared_key", None))
        return shared() if shared is not None else None

    def frame_for_sharing(self, data: bytes, *, text: bool, compress: bool | None = None) -> bytes:
        """One whole message as a frame for every connection whose :meth:`share_key` matches.

        ``data`` is the payload (UTF-8 for text, not re-validated); ``compress``
        as for :meth:`share_key`.  This connection's state, its compressor's
        included, is left alone.  Raise InvalidState when :meth:`share_key` is
        None: then only :meth:`send_text` / :meth:`send_binary` can frame it.
        """
        key = self.share_key(len(data), compress)
        if key is None:
            raise InvalidState("this connection's frames cannot be shared; send them directly")
        opcode = _TEXT if text else _BINARY
        if key == ():
            return frame_header(opcode, len(data)) + data
        codec = cast(SharedCodec, self._codec)
        payload = codec.deflate_shared(data)
        # RFC 7692 section 6: RSV1 marks the (first) frame of a compressed message.
        return frame_header(opcode, len(payload), rsv1=True) + payload

    def send_frame(self, frame: bytes) -> None:
        """Queue a whole data frame built by :meth:`frame_for_sharing`.

        The frame may come from another connection with an equal
        :meth:`share_key`; the caller vouches for that.  Raise InvalidState
        when the connection is not OPEN, while a fragmented message is being
        sent (section 5.4: its fragments may not be interleaved with another
        data frame), and on the client side (section 5.3: a client masks each
        frame with its own key).
        """
        if self.state is not State.OPEN or self._send_op or self._masks is not None:
            self._check_open()
            if self._send_op:
                raise InvalidState("a fragmented message is being sent; continue it first")
            raise InvalidState("a client masks each frame with its own key; send it directly")
        self._out.append(frame)

    def send_text(
        self, data: str | BytesLike, *, fin: bool = True, compress: bool | None = None
    ) -> None:
        """Send a text message, or its first fragment when ``fin`` is False (section 5.6).

        ``data`` may be ``str`` or UTF-8 bytes (not re-validated).  ``compress``
        overrides the permessage-deflate threshold for this message.
        """
        payload = data.encode() if isinstance(data, str) else bytes(data)
        self._send_data(_TEXT, payload, fin, compress)

    def send_binary(
        self, data: BytesLike, *, fin: bool = True, compress: bool | None = None
    ) -> None:
        """Send a binary message, or its first fragment when ``fin`` is False (section 5.6)."""
        self._send_data(_BINARY, data if isinstance(data, bytes) else bytes(data), fin, compress)

    def send_continuation(self, data: str | BytesLike, *, fin: bool) -> None:
        """Send the next fragment of the message being sent (section 5.4)."""
        payload = data.encode() if isinstance(data, str) else bytes(data)
        self._send_data(0, payload, fin, None)

    def send_ping(self, data: BytesLike = b"") -> None:
        """Send a ping; at most 125 bytes (section 5.5.2)."""
        self._send_control(Opcode.PING, bytes(data))

    def send_pong(self, data: BytesLike = b"") -> None:
        """Send an unsolicited pong (a heartbeat, section 5.5.3)."""
        self._send_control(Opcode.PONG, bytes(data))

    def _send_control(self, opcode: int, payload: bytes) -> None:
        if self.state is not State.OPEN:
            raise InvalidState(f"cannot send a control frame: connection is {self.state.name}")
        if len(payload) > MAX_CONTROL_PAYLOAD:
            raise ValueError(f"control frame payload of {len(payload)} bytes > 125")
        self._out.append(self._frame(opcode, payload))

    def send_close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the closing handshake (section 7.1.2).

        ``code`` must be sendable (1000-1003, 1007-1014, 3000-4999) and the
        reason's UTF-8 form at most 123 bytes; otherwise ValueError.
        """
        if not is_sendable_code(code):
            raise ValueError(f"close code {code} may not be sent")
        if len(reason.encode()) > MAX_REASON_BYTES:
            raise ValueError("close reason longer than 123 bytes in UTF-8")
        if self.close_sent is not None or self.state is not State.OPEN:
            # CONNECTING too: a close frame before the handshake completes would
            # reach the peer ahead of (or instead of) the 101 response.
            raise InvalidState(f"cannot send a close frame: connection is {self.state.name}")
        close = Close(code, reason)
        self.close_sent = close
        self._out.append(self._frame(Opcode.CLOSE, close.serialize()))
        if self.state is State.OPEN:
            self.state = State.CLOSING
        self._send_op = 0

    def fail(self, code: int = CloseCode.PROTOCOL_ERROR, reason: str = "") -> None:
        """Fail the connection (section 7.1.7): send a close frame if none was sent yet.

        Further input is discarded; :meth:`close_expected` becomes true.  The
        reason is shortened to fit the 123 bytes a close frame allows.  ``code``
        must be sendable, as for :meth:`send_close`; otherwise ValueError.  While
        CONNECTING there is nothing to close: the state becomes CLOSED.
        """
        if not is_sendable_code(code):
            # Section 7.4.1: 1005, 1006 and 1015 MUST NOT be sent in a close frame.
            raise ValueError(f"close code {code} may not be sent")
        self._discard = True
        if self.failure is None:
            self.failure = ProtocolError(reason or f"connection failed with {code}", code)
        if self.state is State.CONNECTING:
            # No WebSocket yet, so no close frame: the TCP connection just ends.
            self.state = State.CLOSED
        if self.close_sent is None and self.state is State.OPEN:
            close = Close(code, Close.truncate_reason(reason))
            self.close_sent = close
            self._out.append(self._frame(Opcode.CLOSE, close.serialize()))
            if self.state is State.OPEN:
                self.state = State.CLOSING
