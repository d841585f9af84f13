"""The sans-I/O connection: framing rules, limits, closing, fragments and deflate (RFC 6455/7692).

Frames fed to the connection under test are built here by :func:`frame`, independently of
``frames.py``, and frames it sends are decoded by :func:`parse_frames`, so neither side of a
test trusts the code under test.
"""

from __future__ import annotations

import random
import struct
import tracemalloc
import zlib
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidewire.errors import HandshakeError, InvalidState, PayloadTooBig, ProtocolError
from tidewire.protocol.client import ClientProtocol
from tidewire.protocol.connection import (
    DEFAULT_MAX_MESSAGE_SIZE,
    Connection,
    Side,
    State,
)
from tidewire.protocol.deflate import ClientDeflateFactory, PerMessageDeflate, ServerDeflateFactory
from tidewire.protocol.events import CloseReceived, Event, Message, Ping, Pong
from tidewire.protocol.server import ServerProtocol

MASK = b"\x37\xfa\x21\x3d"
MiB = 1 << 20

SIDES = pytest.mark.parametrize("side", [Side.SERVER, Side.CLIENT], ids=["server", "client"])

# ------------------------------------------------------------------------------------ helpers


def xor(data: bytes, mask: bytes) -> bytes:
    """RFC 6455 section 5.3 masking, one byte at a time."""
    return bytes(byte ^ mask[i % 4] for i, byte in enumerate(data))


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool,
    length: int | None = None,
    mask: bytes = MASK,
) -> bytes:
    """Encode one frame by hand (section 5.2); ``rsv`` is 0x40/0x20/0x10 or a mix."""
    size = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | rsv | opcode
    m = 0x80 if masked else 0
    if size < 126:
        head = bytes([b0, m | size])
    elif size < 65536:
        head = bytes([b0, m | 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([b0, m | 127]) + size.to_bytes(8, "big")
    if masked:
        return head + mask + xor(payload, mask)
    return head + payload


def to(side: Side, opcode: int, payload: bytes = b"", **kwargs: object) -> bytes:
    """A frame as the peer of ``side`` sends it: masked towards a server only (section 5.1)."""
    return frame(opcode, payload, masked=side is Side.SERVER, **kwargs)  # type: ignore[arg-type]


def close_payload(code: int, reason: str = "") -> bytes:
    """A close frame payload."""
    return struct.pack("!H", code) + reason.encode()


@dataclass
class Frame:
    """A frame decoded by the test's own parser."""

    fin: bool
    rsv: int
    opcode: int
    masked: bool
    payload: bytes


def parse_frames(data: bytes) -> list[Frame]:
    """Decode a byte string of complete frames (section 5.2)."""
    out: list[Frame] = []
    pos = 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        size = b1 & 0x7F
        pos += 2
        if size == 126:
            size = int.from_bytes(data[pos : pos + 2], "big")
            pos += 2
        elif size == 127:
            size = int.from_bytes(data[pos : pos + 8], "big")
            pos += 8
        masked = bool(b1 & 0x80)
        mask = b""
        if masked:
            mask = data[pos : pos + 4]
            pos += 4
        payload = data[pos : pos + size]
        assert len(payload) == size, "truncated frame"
        pos += size
        if masked:
            payload = xor(payload, mask)
        out.append(Frame(bool(b0 & 0x80), b0 & 0x70, b0 & 0x0F, masked, payload))
    return out


def sent_close(conn: Connection) -> tuple[int, str] | None:
    """The (code, reason) of the single close frame ``conn`` queued, checking its masking."""
    frames = parse_frames(conn.data_to_send())
    closes = [f for f in frames if f.opcode == 0x8]
    if not closes:
        return None
    assert len(closes) == 1
    (close,) = closes
    assert close.masked is (conn.side is Side.CLIENT)
    if not close.payload:
        return (1005, "")
    return struct.unpack("!H", close.payload[:2])[0], close.payload[2:].decode()


def failed_with(conn: Connection, code: int) -> None:
    """Assert ``conn`` recorded a failure with ``code`` and queued the matching close frame."""
    assert conn.failure is not None, "no failure recorded"
    assert isinstance(conn.failure, ProtocolError)
    assert conn.failure.close_code == code, conn.failure
    close = sent_close(conn)
    assert close is not None and close[0] == code
    assert conn.state is State.CLOSING
    assert conn.close_expected()


def text_pieces(events: list[Event]) -> tuple[str, list[bool]]:
    """Join streamed text pieces (checking each is a text Message) and list their fin flags."""
    texts: list[str] = []
    fins: list[bool] = []
    for event in events:
        assert isinstance(event, Message) and isinstance(event.data, str), event
        texts.append(event.data)
        fins.append(event.fin)
    return "".join(texts), fins


def peer_of(side: Side) -> Side:
    """The other end."""
    return Side.CLIENT if side is Side.SERVER else Side.SERVER


def pair_deflate(**kwargs: object) -> tuple[Connection, Connection]:
    """A client and a server connection sharing a negotiated permessage-deflate."""
    client = Connection(
        Side.CLIENT,
        extensions=[PerMessageDeflate(is_server_side=False)],
        **kwargs,  # type: ignore[arg-type]
    )
    server = Connection(
        Side.SERVER,
        extensions=[PerMessageDeflate(is_server_side=True)],
        **kwargs,  # type: ignore[arg-type]
    )
    return client, server


# ------------------------------------------------------------------------------ basic flow


@SIDES
def test_text_and_binary_messages(side: Side) -> None:
    """Whole text and binary messages become Message events (section 6.2)."""
    conn = Connection(side)
    conn.receive_data(to(side, 0x1, "héllo".encode()) + to(side, 0x2, b"\x00\xff"))
    assert conn.events_received() == [Message("héllo"), Message(b"\x00\xff")]
    assert conn.events_received() == []
    assert conn.failure is None
    assert conn.state is State.OPEN


@SIDES
def test_empty_messages(side: Side) -> None:
    """Zero-length text and binary messages are delivered."""
    conn = Connection(side)
    conn.receive_data(to(side, 0x1) + to(side, 0x2))
    assert conn.events_received() == [Message(""), Message(b"")]


@SIDES
@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_receive_accepts_bytes_like(side: Side, kind: type) -> None:
    """receive_data takes bytes, bytearray and memoryview."""
    conn = Connection(side)
    data = to(side, 0x1, b"hello")
    conn.receive_data(kind(data[:3]))
    conn.receive_data(kind(data[3:]))
    assert conn.events_received() == [Message("hello")]


@SIDES
def test_byte_by_byte(side: Side) -> None:
    """A stream fed one byte at a time yields the same events."""
    conn = Connection(side)
    data = (
        to(side, 0x1, b"abc")
        + to(side, 0x2, bytes(300))
        + to(side, 0x9, b"p")
        + to(side, 0x1, b"x" * 70000)
    )
    for i in range(len(data)):
        conn.receive_data(data[i : i + 1])
    assert conn.events_received() == [
        Message("abc"),
        Message(bytes(300)),
        Ping(b"p"),
        Message("x" * 70000),
    ]


@SIDES
def test_receive_empty_data_is_noop(side: Side) -> None:
    """Feeding b"" changes nothing."""
    conn = Connection(side)
    conn.receive_data(b"")
    assert conn.events_received() == []
    assert conn.data_to_send() == b""


@SIDES
def test_outgoing_masking(side: Side) -> None:
    """A client masks every frame it sends; a server masks none (section 5.1)."""
    conn = Connection(side)
    conn.send_text("hi")
    conn.send_binary(b"\x01")
    conn.send_ping(b"p")
    conn.send_pong(b"q")
    frames = parse_frames(conn.data_to_send())
    assert [(f.opcode, f.payload) for f in frames] == [
        (0x1, b"hi"),
        (0x2, b"\x01"),
        (0x9, b"p"),
        (0xA, b"q"),
    ]
    assert all(f.masked is (side is Side.CLIENT) for f in frames)
    assert all(f.fin and not f.rsv for f in frames)


@SIDES
def test_send_text_accepts_utf8_bytes(side: Side) -> None:
    """send_text takes str or UTF-8 bytes; send_binary any bytes-like."""
    conn = Connection(side)
    conn.send_text("é".encode())
    conn.send_binary(bytearray(b"ab"))
    conn.send_binary(memoryview(b"cd"))
    assert [f.payload for f in parse_frames(conn.data_to_send())] == [b"\xc3\xa9", b"ab", b"cd"]


def test_data_to_send_drains() -> None:
    """data_to_send returns the queued bytes once."""
    conn = Connection(Side.SERVER)
    conn.send_text("a")
    conn.send_text("b")
    assert conn.data_to_send() == b"\x81\x01a\x81\x01b"
    assert conn.data_to_send() == b""


# ---------------------------------------------------------------------------- framing rules


def test_server_rejects_unmasked_frame() -> None:
    """A server fails the connection on an unmasked client frame (1002, section 5.1)."""
    conn = Connection(Side.SERVER)
    conn.receive_data(frame(0x1, b"hi", masked=False))
    failed_with(conn, 1002)
    assert conn.events_received() == []


def test_client_rejects_masked_frame() -> None:
    """A client fails the connection on a masked server frame (1002, section 5.1)."""
    conn = Connection(Side.CLIENT)
    conn.receive_data(frame(0x1, b"hi", masked=True))
    failed_with(conn, 1002)
    assert conn.events_received() == []


@SIDES
@pytest.mark.parametrize("opcode", [0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_reserved_opcodes(side: Side, opcode: int) -> None:
    """Reserved opcodes fail the connection with 1002 (section 5.2)."""
    conn = Connection(side)
    conn.receive_data(to(side, opcode, b"x"))
    failed_with(conn, 1002)


@SIDES
@pytest.mark.parametrize("rsv", [0x40, 0x20, 0x10, 0x70], ids=["rsv1", "rsv2", "rsv3", "all"])
@pytest.mark.parametrize("opcode", [0x1, 0x2, 0x9])
def test_rsv_bits_without_extension(side: Side, rsv: int, opcode: int) -> None:
    """RSV bits no extension negotiated fail the connection with 1002 (section 5.2)."""
    conn = Connection(side)
    conn.receive_data(to(side, opcode, b"x", rsv=rsv))
    failed_with(conn, 1002)


@SIDES
@pytest.mark.parametrize("opcode", [0x8, 0x9, 0xA])
def test_control_frame_too_long(side: Side, opcode: int) -> None:
    """A control frame of 126 bytes fails with 1002, as soon as its header is in (5.5)."""
    conn = Connection(side)
    conn.receive_data(to(side, opcode, b"x" * 126)[:8])
    failed_with(conn, 1002)


@SIDES
def test_control_frame_of_125_bytes(side: Side) -> None:
    """A 125-byte ping is fine and answered with the same payload."""
    conn = Connection(side)
    conn.receive_data(to(side, 0x9, b"x" * 125))
    assert conn.events_received() == [Ping(b"x" * 125)]
    (pong,) = parse_frames(conn.data_to_send())
    assert (pong.opcode, pong.payload) == (0xA, b"x" * 125)


@SIDES
@pytest.mark.parametrize("opcode", [0x8, 0x9, 0xA])
def test_fragmented_control_frame(side: Side, opcode: int) -> None:
    """A control frame without FIN fails with 1002 (section 5.5)."""
    conn = Connection(side)
    conn.receive_data(to(side, opcode, b"", fin=False))
    failed_with(conn, 1002)


@SIDES
def test_ping_between_fragments(side: Side) -> None:
    """A ping between fragments is answered and the message still reassembles (5.4)."""
    conn = Connection(side)
    conn.receive_data(to(side, 0x1, b"Hel", fin=False))
    conn.receive_data(to(side, 0x9, b"are you there"))
    assert conn.events_received() == [Ping(b"are you there")]
    (pong,) = parse_frames(conn.data_to_send())
    assert (pong.opcode, pong.payload) == (0xA, b"are you there")
    conn.receive_data(to(side, 0x0, b"l", fin=False) + to(side, 0xA, b"") + to(side, 0x0, b"o"))
    assert conn.events_received() == [Pong(b""), Message("Hello")]
    assert conn.failure is None


@SIDES
def test_continuation_without_start(side: Side) -> None:
    """A continuation frame with no message in progress fails with 1002 (5.4)."""
    conn = Connection(side)
    conn.receive_data(to(side, 0x0, b"x"))
    failed_with(conn, 1002)


@SIDES
@pytest.mark.parametrize("opcode", [0x1, 0x2])
def test_new_message_during_fragmented_one(side: Side, opcode: int) -> None:
    """A text or binary frame while a fragmented message is open fails with 1002 (5.4)."""
    conn = Connection(side)
    conn.receive_data(to(side, 0x2, b"a", fin=False) + to(side, opcode, b"b"))
    failed_with(conn, 1002)
    assert conn.events_received() == []


@SIDES
def test_64bit_length_with_top_bit(side: Side) -> None:
    """A 64-bit length with the most significant bit set fails with 1002 (5.2)."""
    conn = Connection(side, max_message_size=None)
    head = bytes([0x82, (0x80 if side is Side.SERVER else 0) | 127]) + (1 << 63).to_bytes(8, "big")
    conn.receive_data(head)
    failed_with(conn, 1002)


@SIDES
def test_non_minimal_length_encoding_accepted(side: Side) -> None:
    """A length sent in a longer encoding than needed is still parsed (lenient receiver)."""
    conn = Connection(side)
    head = bytes([0x82, (0x80 if side is Side.SERVER else 0) | 126]) + (3).to_bytes(2, "big")
    if side is Side.SERVER:
        head += MASK
        body = xor(b"abc", MASK)
    else:
        body = b"abc"
    conn.receive_data(head + body)
    assert conn.events_received() == [Message(b"abc")]


@SIDES
def test_valid_messages_before_bad_frame_are_delivered(side: Side) -> None:
    """Events parsed before a protocol error are still returned, in order."""
    conn = Connection(side)
    conn.receive_data(
        to(side, 0x1, b"one") + to(side, 0x9, b"p") + to(side, 0x2, b"two") + to(side, 0x3)
    )
    assert conn.events_received() == [Message("one"), Ping(b"p"), Message(b"two")]
    assert conn.failure is not None and conn.failure.close_code == 1002


@SIDES
def test_input_after_failure_is_ignored(side: Side) -> None:
    """Once failed, further bytes produce no events and no output."""
    conn = Connection(side)
    conn.receive_data(to(side, 0x3))
    conn.data_to_send()
    conn.receive_data(to(side, 0x1, b"late") + to(side, 0x9, b"p"))
    assert conn.events_received() == []
    assert conn.data_to_send() == b""


# ------------------------------------------------------------------------------------ UTF-8


@SIDES
@pytest.mark.parametrize(
    "data",
    [b"\xff", b"a\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"ok\xc3("],
    ids=["ff", "lone-continuation", "overlong", "surrogate", "above-max", "bad-second"],
)
def test_invalid_utf8_text(side: Side, data: bytes) -> None:
    """Invalid UTF-8 in a text message fails with 1007 (section 8.1)."""
    conn = Connection(side)
    conn.receive_data(to(side, 0x1, data))
    failed_with(conn, 1007)
    assert conn.events_received() == []


@SIDES
def test_invalid_utf8_detected_before_frame_completes(side: Side) -> None:
    """An invalid byte is caught as soon as it arrives, before the frame's rest (fail fast)."""
    conn = Connection(side)
    data = to(side, 0x1, b"abc\xff" + b"d" * 1000)
    head = 8 if side is Side.SERVER else 4  # 16-bit length, plus the key towards a server
    conn.receive_data(data[: head + 3])
    assert conn.failure is None
    conn.receive_data(data[head + 3 : head + 4])
    failed_with(conn, 1007)


@SIDES
def test_invalid_utf8_detected_in_first_fragment(side: Side) -> None:
    """An invalid first fragment fails before the message's FIN frame arrives."""
    conn = Connection(side)
    conn.receive_data(to(side, 0x1, b"ab\xc3(", fin=False))
    failed_with(conn, 1007)


@SIDES
def test_invalid_utf8_split_across_fragments(side: Side) -> None:
    """A sequence started in one fragment and broken in the next fails with 1007."""
    conn = Connection(side)
    conn.receive_data(to(side, 0x1, b"ab\xe2\x82", fin=False))
    assert conn.failure is None
    conn.receive_data(to(side, 0x0, b"(", fin=False))
    failed_with(conn, 1007)


@SIDES
def test_valid_utf8_split_across_fragments(side: Side) -> None:
    """A sequence split over three fragments reassembles."""
    conn = Connection(side)
    euro = "€".encode()
    conn.receive_data(
        to(side, 0x1, euro[:1], fin=False)
        + to(side, 0x0, euro[1:2], fin=False)
        + to(side, 0x0, euro[2:] + b"!")
    )
    assert conn.events_received() == [Message("€!")]


@SIDES
@pytest.mark.parametrize("tail", [b"\xe2\x82", b"\xf0", b"\xf0\x9f\x98"])
def test_text_ending_inside_sequence(side: Side, tail: bytes) -> None:
    """A text message ending inside a UTF-8 sequence fails with 1007."""
    conn = Connection(side)
    conn.receive_data(to(side, 0x1, b"ok" + tail))
    failed_with(conn, 1007)


@SIDES
def test_fragmented_text_ending_inside_sequence(side: Side) -> None:
    """The check runs at the end of a fragmented message too (empty final fragment)."""
    conn = Connection(side)
    conn.receive_data(to(side, 0x1, b"ok\xe2\x82", fin=False) + to(side, 0x0, b""))
    failed_with(conn, 1007)


@SIDES
def test_binary_is_not_utf8_checked(side: Side) -> None:
    """Binary messages may hold any bytes."""
    conn = Connection(side)
    conn.receive_data(to(side, 0x2, b"\xff\xfe", fin=False) + to(side, 0x0, b"\xc3"))
    assert conn.events_received() == [Message(b"\xff\xfe\xc3")]


UTF8_EDGES = st.sampled_from(
    [b"\x7f", b"\x80", b"\xbf", b"\xc0", b"\xc1", b"\xc2", b"\xdf", b"\xe0", b"\xed", b"\xef"]
    + [b"\xf0", b"\xf4", b"\xf5", b"\xff", b"\x8f", b"\x90", b"\x9f", b"\xa0"]
)


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(st.text(max_size=4).map(str.encode) | UTF8_EDGES, max_size=8),
    cuts=st.lists(st.integers(0, 40), max_size=4),
    side=st.sampled_from([Side.SERVER, Side.CLIENT]),
)
def test_utf8_verdict_independent_of_fragmentation(
    parts: list[bytes], cuts: list[int], side: Side
) -> None:
    """Whole-frame and fragmented text agree with Python's strict codec on validity."""
    data = b"".join(parts)
    try:
        expected: list[Event] = [Message(data.decode("utf-8"))]
    except UnicodeDecodeError:
        expected = []
    points = sorted({min(c, len(data)) for c in cuts})
    bounds = [0, *points, len(data)]
    pieces = [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    fragmented = b"".join(
        to(side, 0x1 if i == 0 else 0x0, piece, fin=i == len(pieces) - 1)
        for i, piece in enumerate(pieces)
    )
    for stream in (to(side, 0x1, data), fragmented):
        conn = Connection(side)
        conn.receive_data(stream)
        assert conn.events_received() == expected
        if expected:
            assert conn.failure is None
        else:
            assert conn.failure is not None and conn.failure.close_code == 1007


# ---------------------------------------------------------------------------- defer_failure


@SIDES
def test_defer_failure_keeps_close_unqueued(side: Side) -> None:
    """defer_failure=True records the failure but queues nothing until fail() is called."""
    conn = Connection(side, defer_failure=True)
    conn.receive_data(to(side, 0x1, b"echo me") + to(side, 0x1, b"\xff") + to(side, 0x1, b"x"))
    assert conn.events_received() == [Message("echo me")]
    assert conn.failure is not None and conn.failure.close_code == 1007
    assert conn.data_to_send() == b""
    assert conn.close_sent is None
    assert not conn.close_expected()
    # The driver handles the valid event (an echo), then fails the connection.
    conn.send_text("echo me")
    conn.fail(conn.failure.close_code, str(conn.failure))
    frames = parse_frames(conn.data_to_send())
    assert [f.opcode for f in frames] == [0x1, 0x8]
    assert struct.unpack("!H", frames[1].payload[:2])[0] == 1007
    assert conn.close_expected()
    assert conn.state is State.CLOSING
    # Input after the failure stays ignored.
    conn.receive_data(to(side, 0x1, b"more"))
    assert conn.events_received() == []


@SIDES
def test_defer_failure_keeps_first_failure(side: Side) -> None:
    """fail() after a deferred failure keeps the recorded ProtocolError."""
    conn = Connection(side, defer_failure=True)
    conn.receive_data(to(side, 0x3))
    first = conn.failure
    conn.fail(1002, "reserved opcode")
    assert conn.failure is first


# ----------------------------------------------------------------------------------- limits


@SIDES
def test_max_message_size_single_frame(side: Side) -> None:
    """A frame over max_message_size fails with 1009 from its header alone."""
    conn = Connection(side, max_message_size=1000)
    conn.receive_data(to(side, 0x2, bytes(1001))[:8])
    failed_with(conn, 1009)
    failure = conn.failure
    assert isinstance(failure, PayloadTooBig)
    assert (failure.what, failure.limit, failure.size) == ("message", 1000, 1001)
    assert "1000" in str(failure) and "1001" in str(failure)


@SIDES
def test_max_message_size_exactly_at_limit(side: Side) -> None:
    """A message of exactly max_message_size bytes is accepted."""
    conn = Connection(side, max_message_size=1000)
    conn.receive_data(to(side, 0x2, bytes(600), fin=False) + to(side, 0x0, bytes(400)))
    assert conn.events_received() == [Message(bytes(1000))]


@SIDES
def test_max_message_size_across_fragments(side: Side) -> None:
    """Fragments adding up to more than max_message_size fail with 1009."""
    conn = Connection(side, max_message_size=1000)
    conn.receive_data(to(side, 0x1, b"a" * 600, fin=False))
    conn.receive_data(to(side, 0x0, b"b" * 401))
    failed_with(conn, 1009)
    failure = conn.failure
    assert isinstance(failure, PayloadTooBig)
    assert (failure.what, failure.limit, failure.size) == ("message", 1000, 1001)


@SIDES
def test_default_max_message_size(side: Side) -> None:
    """The default limit is 1 MiB."""
    assert DEFAULT_MAX_MESSAGE_SIZE == MiB
    conn = Connection(side)
    conn.receive_data(to(side, 0x2, length=MiB + 1, payload=b"")[:14])
    failed_with(conn, 1009)


@SIDES
def test_max_message_size_none(side: Side) -> None:
    """max_message_size=None disables the limit."""
    conn = Connection(side, max_message_size=None)
    conn.receive_data(to(side, 0x2, bytes(MiB + 1)))
    assert conn.events_received() == [Message(bytes(MiB + 1))]


@SIDES
def test_max_frame_size(side: Side) -> None:
    """A frame over max_frame_size fails with 1009 naming the frame limit."""
    conn = Connection(side, max_frame_size=100)
    conn.receive_data(to(side, 0x2, bytes(80), fin=False) + to(side, 0x0, bytes(80)))
    assert conn.events_received() == [Message(bytes(160))]
    conn.receive_data(to(side, 0x1, b"x" * 101))
    failed_with(conn, 1009)
    failure = conn.failure
    assert isinstance(failure, PayloadTooBig)
    assert (failure.what, failure.limit, failure.size) == ("frame", 100, 101)


# ------------------------------------------------------------------------- close handshake


@SIDES
def test_peer_initiated_close(side: Side) -> None:
    """A received close is reported, echoed with the same code, and moves to CLOSING (5.5.1)."""
    conn = Connection(side)
    conn.receive_data(to(side, 0x8, close_payload(1001, "going away")))
    assert conn.events_received() == [CloseReceived(1001, "going away")]
    assert sent_close(conn) == (1001, "going away")
    assert conn.state is State.CLOSING
    assert conn.close_code == 1001
    assert conn.close_reason == "going away"
    assert conn.close_rcvd is not None and conn.close_rcvd.code == 1001
    assert conn.close_sent is not None and conn.close_sent.code == 1001
    assert conn.close_expected()
    assert conn.failure is None
    conn.receive_eof()
    assert conn.state is State.CLOSED
    assert conn.close_expected()


@SIDES
def test_local_initiated_close(side: Side) -> None:
    """send_close moves to CLOSING; the peer's answer completes the handshake (7.1.2)."""
    conn = Connection(side)
    conn.send_close(4000, "done")
    assert sent_close(conn) == (4000, "done")
    assert conn.state is State.CLOSING
    assert not conn.close_expected()
    # The peer may still send data before its close frame.
    conn.receive_data(to(side, 0x1, b"last words"))
    conn.receive_data(to(side, 0x8, close_payload(4000, "done")))
    assert conn.events_received() == [Message("last words"), CloseReceived(4000, "done")]
    assert conn.data_to_send() == b""  # no second close frame
    assert conn.close_expected()
    assert conn.state is State.CLOSING
    conn.receive_eof()
    assert conn.state is State.CLOSED


@SIDES
def test_empty_close_is_1005(side: Side) -> None:
    """An empty close frame means 1005 and is echoed empty."""
    conn = Connection(side)
    conn.receive_data(to(side, 0x8))
    assert conn.events_received() == [CloseReceived(1005, "")]
    frames = parse_frames(conn.data_to_send())
    assert [(f.opcode, f.payload) for f in frames] == [(0x8, b"")]
    assert conn.close_code == 1005


@SIDES
def test_eof_without_close_is_1006(side: Side) -> None:
    """Without a close frame, the close code is 1006 (section 7.1.5)."""
    conn = Connection(side)
    assert conn.close_code == 1006
    assert conn.close_reason == ""
    conn.receive_eof()
    assert conn.state is State.CLOSED
    assert conn.close_code == 1006
    assert conn.close_expected()
    conn.receive_data(to(side, 0x1, b"after eof"))
    assert conn.events_received() == []


@SIDES
@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"\x03", 1002),
        (close_payload(1005), 1002),
        (close_payload(999), 1002),
        (b"\x03\xe8\xff", 1007),
    ],
    ids=["one-byte", "1005", "999", "bad-utf8"],
)
def test_invalid_close_frame(side: Side, payload: bytes, code: int) -> None:
    """An invalid close frame fails the connection instead of being echoed."""
    conn = Connection(side)
    conn.receive_data(to(side, 0x8, payload))
    failed_with(conn, code)
    assert conn.events_received() == []


@SIDES
def test_data_after_close_is_ignored(side: Side) -> None:
    """Frames after a close frame are discarded (section 5.5.1)."""
    conn = Connection(side)
    conn.receive_data(
        to(side, 0x8, close_payload(1000)) + to(side, 0x1, b"late") + to(side, 0x3, b"bad")
    )
    conn.receive_data(to(side, 0x9, b"later"))
    assert conn.events_received() == [CloseReceived(1000, "")]
    assert sent_close(conn) == (1000, "")
    assert conn.failure is None


@SIDES
def test_no_pong_after_close_sent(side: Side) -> None:
    """A ping that arrives after we sent a close is reported but not answered."""
    conn = Connection(side)
    conn.send_close()
    conn.data_to_send()
    conn.receive_data(to(side, 0x9, b"p"))
    assert conn.events_received() == [Ping(b"p")]
    assert conn.data_to_send() == b""


SENDERS = {
    "text": lambda c: c.send_text("x"),
    "binary": lambda c: c.send_binary(b"x"),
    "continuation": lambda c: c.send_continuation(b"x", fin=True),
    "ping": lambda c: c.send_ping(b""),
    "pong": lambda c: c.send_pong(b""),
    "close": lambda c: c.send_close(),
}


@SIDES
@pytest.mark.parametrize("how", ["sent", "received", "eof", "failed"])
@pytest.mark.parametrize("what", list(SENDERS))
def test_sending_after_close_raises(side: Side, how: str, what: str) -> None:
    """Once a close frame went either way (or the connection ended), sending is InvalidState."""
    conn = Connection(side)
    if how == "sent":
        conn.send_close()
    elif how == "received":
        conn.receive_data(to(side, 0x8, close_payload(1000)))
    elif how == "eof":
        conn.receive_eof()
    else:
        conn.receive_data(to(side, 0x3))
    conn.data_to_send()
    with pytest.raises(InvalidState):
        SENDERS[what](conn)
    assert conn.data_to_send() == b""


@SIDES
@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000])
def test_send_close_rejects_unsendable_codes(side: Side, code: int) -> None:
    """send_close refuses codes that may not be sent (section 7.4)."""
    conn = Connection(side)
    with pytest.raises(ValueError):
        conn.send_close(code)
    assert conn.data_to_send() == b""
    assert conn.state is State.OPEN


@SIDES
@pytest.mark.parametrize("reason", ["x" * 124, "é" * 62], ids=["ascii", "2-byte"])
def test_send_close_rejects_long_reason(side: Side, reason: str) -> None:
    """A reason over 123 UTF-8 bytes is a ValueError."""
    conn = Connection(side)
    with pytest.raises(ValueError):
        conn.send_close(1000, reason)
    assert conn.state is State.OPEN


@SIDES
def test_send_close_longest_reason(side: Side) -> None:
    """A reason of exactly 123 bytes fills a 125-byte control frame."""
    conn = Connection(side)
    conn.send_close(1000, "é" * 61 + "x")
    assert sent_close(conn) == (1000, "é" * 61 + "x")


@SIDES
def test_send_close_during_fragmented_send(side: Side) -> None:
    """A close may interrupt a fragmented message being sent (control frames interleave)."""
    conn = Connection(side)
    conn.send_text("part", fin=False)
    conn.send_close(1001)
    frames = parse_frames(conn.data_to_send())
    assert [(f.opcode, f.fin) for f in frames] == [(0x1, False), (0x8, True)]


@SIDES
def test_fail(side: Side) -> None:
    """fail() sends a close frame with the code and shortened reason and stops parsing."""
    conn = Connection(side)
    conn.fail(1011, "x" * 300)
    code, reason = sent_close(conn) or (0, "")
    assert code == 1011
    assert len(reason.encode()) <= 123
    assert conn.failure is not None and conn.failure.close_code == 1011
    assert conn.close_expected()
    conn.receive_data(to(side, 0x1, b"ignored"))
    assert conn.events_received() == []


@SIDES
@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 5000])
def test_fail_rejects_unsendable_codes(side: Side, code: int) -> None:
    """fail() never puts 1005/1006/1015 or out-of-range codes on the wire (7.4.1): ValueError."""
    conn = Connection(side)
    with pytest.raises(ValueError):
        conn.fail(code, "nope")
    assert conn.data_to_send() == b""
    assert conn.failure is None
    assert conn.state is State.OPEN
    conn.receive_data(to(side, 0x1, b"still open"))
    assert conn.events_received() == [Message("still open")]


@SIDES
def test_close_while_connecting(side: Side) -> None:
    """send_close before the handshake completed is InvalidState; nothing is queued."""
    conn = Connection(side, state=State.CONNECTING)
    with pytest.raises(InvalidState):
        conn.send_close(1001)
    assert conn.data_to_send() == b""
    assert conn.state is State.CONNECTING


@SIDES
def test_fail_while_connecting(side: Side) -> None:
    """fail() before the handshake completed sends no close frame and ends the connection."""
    conn = Connection(side, state=State.CONNECTING)
    conn.fail(1011, "gave up")
    assert conn.data_to_send() == b""
    assert conn.state is State.CLOSED
    assert conn.failure is not None and conn.failure.close_code == 1011
    assert conn.close_expected()


@SIDES
def test_fail_after_eof_sends_nothing(side: Side) -> None:
    """After the TCP connection ended there is nobody to send a close frame to."""
    conn = Connection(side)
    conn.receive_eof()
    conn.fail(1011)
    assert conn.data_to_send() == b""
    assert conn.state is State.CLOSED


@SIDES
def test_fail_after_close_sent_sends_nothing_more(side: Side) -> None:
    """fail() after send_close does not send a second close frame."""
    conn = Connection(side)
    conn.send_close(1000)
    conn.data_to_send()
    conn.fail(1002, "late")
    assert conn.data_to_send() == b""
    assert conn.close_expected()


# ---------------------------------------------------------------------------- ping / pong


@SIDES
def test_ping_auto_pong(side: Side) -> None:
    """A ping is reported and answered with a pong carrying the same data (5.5.2)."""
    conn = Connection(side)
    conn.receive_data(to(side, 0x9, b"\x00hello\xff"))
    assert conn.events_received() == [Ping(b"\x00hello\xff")]
    (pong,) = parse_frames(conn.data_to_send())
    assert (pong.opcode, pong.fin, pong.payload) == (0xA, True, b"\x00hello\xff")
    assert pong.masked is (side is Side.CLIENT)


@SIDES
def test_pong_is_reported_not_answered(side: Side) -> None:
    """A pong is reported and nothing is sent (5.5.3)."""
    conn = Connection(side)
    conn.receive_data(to(side, 0xA, b"beat"))
    assert conn.events_received() == [Pong(b"beat")]
    assert conn.data_to_send() == b""


@SIDES
def test_send_ping_too_long(side: Side) -> None:
    """Pings and pongs over 125 bytes are refused locally."""
    conn = Connection(side)
    with pytest.raises(ValueError):
        conn.send_ping(bytes(126))
    with pytest.raises(ValueError):
        conn.send_pong(bytes(126))
    conn.send_ping(bytes(125))
    assert parse_frames(conn.data_to_send())[0].payload == bytes(125)


# ------------------------------------------------------------------------ deliver_fragments


@SIDES
def test_deliver_fragments_pieces(side: Side) -> None:
    """With deliver_fragments each data frame is a piece; fin tells where the message ends."""
    conn = Connection(side, deliver_fragments=True)
    conn.receive_data(
        to(side, 0x2, b"ab", fin=False)
        + to(side, 0x0, b"", fin=False)
        + to(side, 0x0, b"cd", fin=False)
        + to(side, 0x0, b"e")
        + to(side, 0x2, b"whole")
    )
    assert conn.events_received() == [
        Message(b"ab", fin=False),
        Message(b"", fin=False),
        Message(b"cd", fin=False),
        Message(b"e", fin=True),
        Message(b"whole", fin=True),
    ]


@SIDES
def test_deliver_fragments_never_splits_utf8(side: Side) -> None:
    """Text pieces hold whole characters; a split sequence moves to the next piece."""
    conn = Connection(side, deliver_fragments=True)
    data = "a€b😀".encode()  # 1 + 3 + 1 + 4 bytes
    conn.receive_data(
        to(side, 0x1, data[:2], fin=False)
        + to(side, 0x0, data[2:6], fin=False)
        + to(side, 0x0, data[6:8], fin=False)
        + to(side, 0x0, data[8:])
    )
    assert text_pieces(conn.events_received()) == ("a€b😀", [False, False, False, True])


@SIDES
def test_deliver_fragments_partial_frame_waits(side: Side) -> None:
    """A piece is delivered when its frame is complete, not per received chunk."""
    conn = Connection(side, deliver_fragments=True)
    data = to(side, 0x2, b"abcdef", fin=False)
    conn.receive_data(data[:-3])
    assert conn.events_received() == []
    conn.receive_data(data[-3:])
    assert conn.events_received() == [Message(b"abcdef", fin=False)]


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=40), cuts=st.lists(st.integers(0, 200), max_size=6))
def test_deliver_fragments_text_pieces_property(text: str, cuts: list[int]) -> None:
    """Any byte-level fragmentation gives text pieces that concatenate to the message."""
    data = text.encode()
    points = sorted({min(c, len(data)) for c in cuts})
    bounds = [0, *points, len(data)]
    pieces = [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    stream = b""
    for i, piece in enumerate(pieces):
        op = 0x1 if i == 0 else 0x0
        stream += to(Side.SERVER, op, piece, fin=i == len(pieces) - 1)
    conn = Connection(Side.SERVER, deliver_fragments=True)
    conn.receive_data(stream)
    assert conn.failure is None
    joined, fins = text_pieces(conn.events_received())
    assert joined == text
    assert fins == [False] * (len(pieces) - 1) + [True]


# --------------------------------------------------------------------- fragmentation (send)


@SIDES
def test_send_fragmented_message(side: Side) -> None:
    """fin=False then send_continuation produce TEXT/CONT frames with FIN on the last only."""
    conn = Connection(side)
    conn.send_text("Hel", fin=False)
    conn.send_continuation("l", fin=False)
    conn.send_ping(b"between")
    conn.send_continuation(b"o", fin=True)
    conn.send_binary(b"next")
    frames = parse_frames(conn.data_to_send())
    assert [(f.opcode, f.fin, f.payload) for f in frames] == [
        (0x1, False, b"Hel"),
        (0x0, False, b"l"),
        (0x9, True, b"between"),
        (0x0, True, b"o"),
        (0x2, True, b"next"),
    ]


@SIDES
def test_send_continuation_without_start(side: Side) -> None:
    """send_continuation with no message in progress is InvalidState."""
    conn = Connection(side)
    with pytest.raises(InvalidState):
        conn.send_continuation(b"x", fin=True)
    conn.send_binary(b"a", fin=False)
    conn.send_continuation(b"b", fin=True)
    with pytest.raises(InvalidState):
        conn.send_continuation(b"c", fin=False)


@SIDES
@pytest.mark.parametrize("second", ["text", "binary"])
def test_send_new_message_while_fragmented(side: Side, second: str) -> None:
    """Starting a message while another is being sent is InvalidState."""
    conn = Connection(side)
    conn.send_text("a", fin=False)
    with pytest.raises(InvalidState):
        if second == "text":
            conn.send_text("b")
        else:
            conn.send_binary(b"b")
    conn.send_continuation("c", fin=True)
    frames = parse_frames(conn.data_to_send())
    assert [(f.opcode, f.payload) for f in frames] == [(0x1, b"a"), (0x0, b"c")]


# ----------------------------------------------------------------------- hypothesis: wire


def big_data(size: int, seed: int, text: bool) -> str | bytes:
    """Deterministic pseudo-random data of ``size`` bytes (text: characters)."""
    rng = random.Random(seed)
    if text:
        alphabet = "aé€😀\x00 z"
        return "".join(rng.choice(alphabet) for _ in range(size))
    return rng.randbytes(size)


sizes = st.one_of(
    st.integers(0, 130),
    st.sampled_from([125, 126, 127, 65535, 65536, 65537]),
    st.integers(131, 70_000),
)


def deliver(sender: Connection, receiver: Connection) -> list[Event]:
    """Move bytes from sender to receiver and return the receiver's events."""
    receiver.receive_data(sender.data_to_send())
    assert receiver.failure is None, receiver.failure
    return receiver.events_received()


@settings(max_examples=60, deadline=None)
@given(
    direction=st.sampled_from([Side.CLIENT, Side.SERVER]),
    text=st.booleans(),
    size=sizes,
    seed=st.integers(0, 2**32),
)
def test_round_trip_property(direction: Side, text: bool, size: int, seed: int) -> None:
    """What one side sends, the other receives unchanged (client->server and server->client)."""
    sender = Connection(direction)
    receiver = Connection(peer_of(direction))
    data = big_data(size, seed, text)
    if text:
        sender.send_text(data)
    else:
        sender.send_binary(data)  # type: ignore[arg-type]
    assert deliver(sender, receiver) == [Message(data)]


@settings(max_examples=60, deadline=None)
@given(
    direction=st.sampled_from([Side.CLIENT, Side.SERVER]),
    text=st.text(max_size=60),
    data=st.binary(max_size=300),
    use_text=st.booleans(),
    cuts=st.lists(st.integers(0, 300), max_size=8),
    pings=st.lists(st.booleans(), max_size=8),
)
def test_fragmentation_property(
    direction: Side,
    text: str,
    data: bytes,
    use_text: bool,
    cuts: list[int],
    pings: list[bool],
) -> None:
    """Any split of a message into frames reassembles, with pings in between (5.4)."""
    raw = text.encode() if use_text else data
    points = sorted({min(c, len(raw)) for c in cuts})
    bounds = [0, *points, len(raw)]
    pieces = [raw[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    sender = Connection(direction)
    receiver = Connection(peer_of(direction))
    expected: list[Event] = []
    for i, piece in enumerate(pieces):
        fin = i == len(pieces) - 1
        if i == 0:
            (sender.send_text if use_text else sender.send_binary)(piece, fin=fin)
        else:
            sender.send_continuation(piece, fin=fin)
        if i < len(pings) and pings[i] and not fin:
            sender.send_ping(b"%d" % i)
            expected.append(Ping(b"%d" % i))
    expected.append(Message(text if use_text else data))
    assert deliver(sender, receiver) == expected


@st.composite
def peer_streams(draw: st.DrawFn, side: Side, valid_only: bool) -> bytes:
    """A byte stream of frames towards ``side``: mostly valid, optionally with junk."""
    out = b""
    in_message = False
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["text", "binary", "frag", "ping", "pong", "big"]))
        if kind == "text":
            payload = draw(st.text(max_size=20)).encode()
            out += to(side, 0x0 if in_message else 0x1, payload)
            in_message = False
        elif kind == "binary":
            out += to(side, 0x0 if in_message else 0x2, draw(st.binary(max_size=20)))
            in_message = False
        elif kind == "frag":
            out += to(side, 0x0 if in_message else 0x1, b"frag", fin=False)
            in_message = True
        elif kind == "ping":
            out += to(side, 0x9, draw(st.binary(max_size=10)))
        elif kind == "pong":
            out += to(side, 0xA, draw(st.binary(max_size=10)))
        else:
            out += to(side, 0x0 if in_message else 0x2, bytes(draw(st.integers(126, 70_000))))
            in_message = False
    if in_message:
        out += to(side, 0x0, b"end")
    if draw(st.booleans()):
        out += to(side, 0x8, close_payload(draw(st.sampled_from([1000, 1001, 4000]))))
    if not valid_only:
        out += draw(st.binary(min_size=1, max_size=40))
    return out


def feed_in_chunks(conn: Connection, data: bytes, cuts: list[int]) -> None:
    """Feed ``data`` split at ``cuts``."""
    points = sorted({min(c, len(data)) for c in cuts})
    bounds = [0, *points, len(data)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        conn.receive_data(data[a:b])


def outcome(conn: Connection) -> tuple[list[Event], int | None, list[tuple[int, bytes]]]:
    """Events, failure code and the (opcode, payload) of frames sent: chunking-independent."""
    code = conn.failure.close_code if conn.failure is not None else None
    sent = [(f.opcode, f.payload) for f in parse_frames(conn.data_to_send())]
    return conn.events_received(), code, sent


CHUNK_OPTIONS = st.fixed_dictionaries(
    {
        "max_message_size": st.sampled_from([None, 100, 50_000]),
        "max_frame_size": st.sampled_from([None, 200]),
        "deliver_fragments": st.booleans(),
    }
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    side=st.sampled_from([Side.SERVER, Side.CLIENT]),
    valid=st.booleans(),
    options=CHUNK_OPTIONS,
)
def test_chunking_property(
    data: st.DataObject, side: Side, valid: bool, options: dict[str, object]
) -> None:
    """The same byte stream cut into any chunks gives the same events, failure and output."""
    stream = data.draw(peer_streams(side, valid_only=valid))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    whole = Connection(side, **options)  # type: ignore[arg-type]
    whole.receive_data(stream)
    chunked = Connection(side, **options)  # type: ignore[arg-type]
    feed_in_chunks(chunked, stream, cuts)
    assert outcome(chunked) == outcome(whole)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    side=st.sampled_from([Side.SERVER, Side.CLIENT]),
    options=CHUNK_OPTIONS,
    deflate=st.booleans(),
)
def test_chunking_property_random_frames(
    data: st.DataObject, side: Side, options: dict[str, object], deflate: bool
) -> None:
    """Chunking invariance holds for arbitrary (mostly invalid) frames too, with deflate on."""
    stream = data.draw(random_frames(side))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=8))

    def make() -> Connection:
        """A fresh receiver with the drawn options."""
        ext = [PerMessageDeflate(is_server_side=side is Side.SERVER)] if deflate else []
        return Connection(side, extensions=ext, **options)  # type: ignore[arg-type]

    whole = make()
    whole.receive_data(stream)
    chunked = make()
    feed_in_chunks(chunked, stream, cuts)
    assert outcome(chunked) == outcome(whole)


# -------------------------------------------------------------- hypothesis: bad input (fuzz)


@st.composite
def random_frames(draw: st.DrawFn, side: Side) -> bytes:
    """Frames with random header bits and payloads, mostly masked the right way."""
    out = b""
    for _ in range(draw(st.integers(1, 5))):
        b0 = draw(st.integers(0, 255))
        payload = draw(st.binary(max_size=140))
        masked = draw(st.sampled_from([side is Side.SERVER] * 4 + [side is not Side.SERVER]))
        out += frame(b0 & 0x0F, payload, fin=bool(b0 & 0x80), rsv=b0 & 0x70, masked=masked)
    return out


FUZZ_OPTIONS = st.fixed_dictionaries(
    {
        "max_message_size": st.sampled_from([None, 0, 10, 1000, MiB]),
        "max_frame_size": st.sampled_from([None, 0, 10, 1000]),
        "deliver_fragments": st.booleans(),
        "defer_failure": st.booleans(),
    }
)


def check_never_raises(conn: Connection, chunks: list[bytes]) -> None:
    """Feed chunks; nothing may raise and failure is None or a ProtocolError."""
    for chunk in chunks:
        conn.receive_data(chunk)
        assert conn.failure is None or isinstance(conn.failure, ProtocolError)
        for event in conn.events_received():
            assert isinstance(event, (Message, Ping, Pong, CloseReceived))
        conn.data_to_send()
    conn.receive_eof()
    assert conn.state is State.CLOSED


@settings(max_examples=300, deadline=None)
@given(
    side=st.sampled_from([Side.SERVER, Side.CLIENT]),
    chunks=st.lists(st.binary(max_size=64), max_size=8),
    options=FUZZ_OPTIONS,
    deflate=st.booleans(),
)
def test_random_bytes_never_raise(
    side: Side, chunks: list[bytes], options: dict[str, object], deflate: bool
) -> None:
    """Random bytes into an OPEN connection never raise; failures are ProtocolErrors."""
    ext = [PerMessageDeflate(is_server_side=side is Side.SERVER)] if deflate else []
    conn = Connection(side, extensions=ext, **options)  # type: ignore[arg-type]
    check_never_raises(conn, chunks)


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    side=st.sampled_from([Side.SERVER, Side.CLIENT]),
    options=FUZZ_OPTIONS,
    deflate=st.booleans(),
)
def test_random_frames_never_raise(
    data: st.DataObject, side: Side, options: dict[str, object], deflate: bool
) -> None:
    """Random well-formed-looking frames (any opcode, RSV, FIN, payload) never raise."""
    stream = data.draw(random_frames(side))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=5))
    ext = [PerMessageDeflate(is_server_side=side is Side.SERVER)] if deflate else []
    conn = Connection(side, extensions=ext, **options)  # type: ignore[arg-type]
    points = sorted(set(cuts))
    bounds = [0, *points, len(stream)]
    check_never_raises(conn, [stream[a:b] for a, b in zip(bounds, bounds[1:], strict=False)])


def request_head(extensions: str | None = "permessage-deflate; client_max_window_bits") -> bytes:
    """A valid opening handshake request."""
    lines = [
        "GET /chat?room=1 HTTP/1.1",
        "Host: example.com",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Protocol: chat, superchat",
    ]
    if extensions:
        lines.append(f"Sec-WebSocket-Extensions: {extensions}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    """``base`` with a few random byte replacements, insertions and deletions."""
    data = bytearray(base)
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["replace", "insert", "delete"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "replace" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif data:
            del data[pos]
    return bytes(data)


def check_server_handshake_fuzz(proto: ServerProtocol, chunks: list[bytes]) -> None:
    """Feed chunks into a CONNECTING server; only documented errors may appear."""
    for chunk in chunks:
        proto.receive_data(chunk)
        if proto.request is not None and proto.state is State.CONNECTING:
            try:
                proto.accept()
            except HandshakeError:
                assert proto.handshake_error is not None
                assert proto.close_expected()
        assert proto.handshake_error is None or isinstance(proto.handshake_error, HandshakeError)
        assert proto.failure is None or isinstance(proto.failure, ProtocolError)
        proto.events_received()
        proto.data_to_send()
    if proto.handshake_error is not None:
        assert proto.response is not None and proto.response.status >= 400
        assert proto.close_expected()


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(st.binary(max_size=80), max_size=6),
    prefix=st.sampled_from([b"", b"GET / HTTP/1.1\r\n", request_head()]),
)
def test_random_bytes_into_server_protocol(chunks: list[bytes], prefix: bytes) -> None:
    """Random bytes into a CONNECTING ServerProtocol only set handshake_error or failure."""
    proto = ServerProtocol(extensions=[ServerDeflateFactory()], subprotocols=["chat"])
    check_server_handshake_fuzz(proto, [prefix, *chunks])


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_mutated_request_into_server_protocol(data: st.DataObject) -> None:
    """A mutated opening request plus frames never raises anything undocumented."""
    head = data.draw(mutated(request_head()))
    tail = data.draw(random_frames(Side.SERVER))
    stream = head + tail
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(stream)), max_size=4))))
    bounds = [0, *cuts, len(stream)]
    proto = ServerProtocol(extensions=[ServerDeflateFactory()], subprotocols=["chat"])
    check_server_handshake_fuzz(
        proto, [stream[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    )


def accept_response(client: ClientProtocol, extensions: str | None = None) -> bytes:
    """A valid 101 answer to ``client``'s request, built by a tidewire server."""
    server = ServerProtocol(extensions=[ServerDeflateFactory()] if extensions else [])
    server.receive_data(client.data_to_send())
    server.accept()
    return server.data_to_send()


def check_client_fuzz(proto: ClientProtocol, chunks: list[bytes]) -> None:
    """Feed chunks into a client after connect(); only documented errors may appear."""
    for chunk in chunks:
        proto.receive_data(chunk)
        assert proto.handshake_error is None or isinstance(proto.handshake_error, HandshakeError)
        assert proto.failure is None or isinstance(proto.failure, ProtocolError)
        proto.events_received()
        proto.data_to_send()
    if proto.handshake_error is not None:
        assert proto.state is State.CLOSED
        assert proto.close_expected()


@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(st.binary(max_size=80), max_size=6), valid_head=st.booleans())
def test_random_bytes_into_client_protocol(chunks: list[bytes], valid_head: bool) -> None:
    """Random bytes into a ClientProtocol after connect() only set handshake_error or failure."""
    proto = ClientProtocol("example.com", "/", extensions=[ClientDeflateFactory()])
    proto.connect()
    prefix = b""
    if valid_head:
        prefix = accept_response(proto, extensions="yes")
    else:
        proto.data_to_send()
    check_client_fuzz(proto, [prefix, *chunks])


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_mutated_response_into_client_protocol(data: st.DataObject) -> None:
    """A mutated 101 response plus random frames never raises anything undocumented."""
    proto = ClientProtocol(
        "example.com", "/", extensions=[ClientDeflateFactory()], subprotocols=["chat"]
    )
    proto.connect()
    head = data.draw(mutated(accept_response(proto, extensions="yes")))
    stream = head + data.draw(random_frames(Side.CLIENT))
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(stream)), max_size=4))))
    bounds = [0, *cuts, len(stream)]
    check_client_fuzz(proto, [stream[a:b] for a, b in zip(bounds, bounds[1:], strict=False)])


# --------------------------------------------------------------------- permessage-deflate


def test_deflate_round_trip_both_directions() -> None:
    """Compressed messages survive both directions; the first frame carries RSV1 (RFC 7692)."""
    client, server = pair_deflate()
    text = "the quick brown fox jumps over the lazy dog " * 20
    client.send_text(text)
    wire = client.data_to_send()
    (f,) = parse_frames(wire)
    assert f.rsv == 0x40 and f.opcode == 0x1 and f.masked
    assert len(f.payload) < len(text)
    server.receive_data(wire)
    assert server.events_received() == [Message(text)]
    blob = bytes(range(256)) * 40
    server.send_binary(blob)
    wire = server.data_to_send()
    (f,) = parse_frames(wire)
    assert f.rsv == 0x40 and f.opcode == 0x2 and not f.masked
    client.receive_data(wire)
    assert client.events_received() == [Message(blob)]
    assert client.failure is None and server.failure is None


def test_deflate_context_takeover_many_messages() -> None:
    """A run of compressed messages (shared LZ77 window) all decode."""
    client, server = pair_deflate()
    messages = [f'{{"event": "tick", "n": {i}, "pad": "{"x" * (i % 50)}"}}' for i in range(200)]
    for message in messages:
        client.send_text(message)
    server.receive_data(client.data_to_send())
    assert server.events_received() == [Message(m) for m in messages]


def test_deflate_fragmented_rsv1_only_on_first_frame() -> None:
    """A compressed fragmented message sets RSV1 on its first frame only (RFC 7692 6.1)."""
    client, server = pair_deflate()
    parts = ["alpha " * 20, "beta " * 20, "gamma " * 20]
    client.send_text(parts[0], fin=False, compress=True)
    client.send_continuation(parts[1], fin=False)
    client.send_ping(b"mid")
    client.send_continuation(parts[2], fin=True)
    wire = client.data_to_send()
    frames = parse_frames(wire)
    assert [(f.opcode, f.fin, f.rsv) for f in frames] == [
        (0x1, False, 0x40),
        (0x0, False, 0),
        (0x9, True, 0),
        (0x0, True, 0),
    ]
    server.receive_data(wire)
    assert server.events_received() == [Ping(b"mid"), Message("".join(parts))]


def test_deflate_threshold() -> None:
    """Messages under min_size (32 bytes by default) go uncompressed; larger ones compressed."""
    client, server = pair_deflate()
    client.send_text("x" * 31)
    client.send_text("x" * 32)
    wire = client.data_to_send()
    assert [f.rsv for f in parse_frames(wire)] == [0, 0x40]
    server.receive_data(wire)
    assert server.events_received() == [Message("x" * 31), Message("x" * 32)]


def test_deflate_compress_overrides() -> None:
    """compress=False sends a big message plain; compress=True compresses a tiny one."""
    client, server = pair_deflate()
    client.send_binary(bytes(5000), compress=False)
    client.send_text("hi", compress=True)
    client.send_text("", compress=True)
    wire = client.data_to_send()
    frames = parse_frames(wire)
    assert [f.rsv for f in frames] == [0, 0x40, 0x40]
    assert frames[0].payload == bytes(5000)
    server.receive_data(wire)
    assert server.events_received() == [Message(bytes(5000)), Message("hi"), Message("")]


def test_deflate_compress_true_without_extension() -> None:
    """compress=True without a negotiated extension sends plain frames."""
    conn = Connection(Side.SERVER)
    conn.send_text("hello " * 20, compress=True)
    (f,) = parse_frames(conn.data_to_send())
    assert f.rsv == 0


def compressed(data: bytes, wbits: int = 15) -> bytes:
    """data as a permessage-deflate payload (sync flush, tail removed)."""
    co = zlib.compressobj(9, zlib.DEFLATED, -wbits)
    out = co.compress(data) + co.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


@pytest.mark.parametrize("chunk", [None, 1024], ids=["whole", "1KiB-chunks"])
def test_decompression_bomb(chunk: int | None) -> None:
    """16 MiB of zeros compressed to ~16 KiB fails with 1009 without inflating it all."""
    bomb = compressed(bytes(16 * MiB))
    assert len(bomb) < 20_000
    server = Connection(
        Side.SERVER, extensions=[PerMessageDeflate(is_server_side=True)], max_message_size=MiB
    )
    data = frame(0x2, bomb, rsv=0x40, masked=True)
    tracemalloc.start()
    try:
        if chunk is None:
            server.receive_data(data)
        else:
            for i in range(0, len(data), chunk):
                server.receive_data(data[i : i + chunk])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    failed_with(server, 1009)
    failure = server.failure
    assert isinstance(failure, PayloadTooBig)
    assert failure.limit == MiB
    # zlib is asked for at most one byte past the limit, so that is all it ever inflated.
    assert failure.size == MiB + 1
    # Holding the inflated output of the bomb would take 16 MiB; the core stays near the limit.
    assert peak < 4 * MiB, peak
    assert server.events_received() == []


def test_decompression_bomb_fragmented() -> None:
    """A bomb spread over continuation frames is stopped at the message limit too."""
    bomb = compressed(bytes(8 * MiB))
    server = Connection(
        Side.SERVER, extensions=[PerMessageDeflate(is_server_side=True)], max_message_size=MiB
    )
    step = len(bomb) // 4
    server.receive_data(frame(0x2, bomb[:step], rsv=0x40, fin=False, masked=True))
    for i in range(step, len(bomb), step):
        server.receive_data(frame(0x0, bomb[i : i + step], fin=i + step >= len(bomb), masked=True))
    failed_with(server, 1009)


def test_deflate_message_at_limit() -> None:
    """A compressed message inflating to exactly max_message_size is accepted."""
    client, server = pair_deflate(max_message_size=10_000)
    client.send_binary(bytes(10_000))
    server.receive_data(client.data_to_send())
    assert server.events_received() == [Message(bytes(10_000))]
    client.send_binary(bytes(10_001))
    server.receive_data(client.data_to_send())
    failed_with(server, 1009)


@SIDES
def test_rsv1_on_continuation_frame(side: Side) -> None:
    """RSV1 on a continuation frame is a protocol error (RFC 7692 section 6.1)."""
    conn = Connection(side, extensions=[PerMessageDeflate(is_server_side=side is Side.SERVER)])
    conn.receive_data(to(side, 0x2, b"ab", fin=False) + to(side, 0x0, b"cd", rsv=0x40))
    failed_with(conn, 1002)


@SIDES
@pytest.mark.parametrize("rsv", [0x20, 0x10, 0x60])
def test_other_rsv_bits_with_deflate(side: Side, rsv: int) -> None:
    """permessage-deflate claims RSV1 only; RSV2/RSV3 still fail with 1002."""
    conn = Connection(side, extensions=[PerMessageDeflate(is_server_side=side is Side.SERVER)])
    conn.receive_data(to(side, 0x1, b"x", rsv=rsv))
    failed_with(conn, 1002)


@SIDES
def test_rsv1_on_control_frame_with_deflate(side: Side) -> None:
    """Control frames are never compressed: RSV1 on a ping fails with 1002."""
    conn = Connection(side, extensions=[PerMessageDeflate(is_server_side=side is Side.SERVER)])
    conn.receive_data(to(side, 0x9, b"x", rsv=0x40))
    failed_with(conn, 1002)


@SIDES
def test_invalid_deflate_data(side: Side) -> None:
    """A compressed payload that is not DEFLATE fails with 1007."""
    conn = Connection(side, extensions=[PerMessageDeflate(is_server_side=side is Side.SERVER)])
    conn.receive_data(to(side, 0x2, b"\xff\xff\xff\xff", rsv=0x40))
    failed_with(conn, 1007)


@SIDES
def test_deflate_invalid_utf8_after_inflate(side: Side) -> None:
    """UTF-8 is checked on the inflated text, not on the compressed bytes."""
    conn = Connection(side, extensions=[PerMessageDeflate(is_server_side=side is Side.SERVER)])
    conn.receive_data(to(side, 0x1, compressed(b"ok \xff"), rsv=0x40))
    failed_with(conn, 1007)


def test_deflate_deliver_fragments() -> None:
    """Compressed fragmented text can be streamed; pieces concatenate to the message."""
    client = Connection(Side.CLIENT, extensions=[PerMessageDeflate(is_server_side=False)])
    server = Connection(
        Side.SERVER, extensions=[PerMessageDeflate(is_server_side=True)], deliver_fragments=True
    )
    data = ("€uro " * 30).encode()
    client.send_text(data[:50], fin=False, compress=True)
    client.send_continuation(data[50:101], fin=False)
    client.send_continuation(data[101:], fin=True)
    server.receive_data(client.data_to_send())
    assert text_pieces(server.events_received()) == (data.decode(), [False, False, True])


@settings(max_examples=40, deadline=None)
@given(
    messages=st.lists(st.tuples(st.text(max_size=120), st.booleans()), min_size=1, max_size=5),
    cuts=st.lists(st.integers(0, 2000), max_size=10),
    direction=st.sampled_from([Side.CLIENT, Side.SERVER]),
)
def test_deflate_chunking_property(
    messages: list[tuple[str, bool]], cuts: list[int], direction: Side
) -> None:
    """Compressed streams cut into any chunks decode to the messages sent."""
    sender = Connection(
        direction, extensions=[PerMessageDeflate(is_server_side=direction is Side.SERVER)]
    )
    receiver = Connection(
        peer_of(direction),
        extensions=[PerMessageDeflate(is_server_side=direction is not Side.SERVER)],
    )
    for text, compress in messages:
        sender.send_text(text, compress=compress)
    feed_in_chunks(receiver, sender.data_to_send(), cuts)
    assert receiver.failure is None
    assert receiver.events_received() == [Message(text) for text, _ in messages]


# --------------------------------------------------------------------------------- misc


def test_close_expected_states() -> None:
    """close_expected is false while open and after only our close frame."""
    conn = Connection(Side.CLIENT)
    assert not conn.close_expected()
    conn.send_close()
    assert not conn.close_expected()


@SIDES
def test_initial_state(side: Side) -> None:
    """A new connection is OPEN, with nothing received, sent or failed."""
    conn = Connection(side)
    assert conn.state is State.OPEN
    assert conn.failure is None
    assert conn.close_rcvd is None and conn.close_sent is None
    assert conn.events_received() == [] and conn.data_to_send() == b""
