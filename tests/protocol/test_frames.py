"""Frame opcodes, header serialization and masking (RFC 6455 sections 5.2, 5.3 and 5.7)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidewire.protocol.connection import Connection, Side
from tidewire.protocol.events import Message, Ping, Pong
from tidewire.protocol.frames import (
    CONTROL_OPCODES,
    DATA_OPCODES,
    MAX_CONTROL_PAYLOAD,
    MaskSource,
    Opcode,
    frame_header,
    serialize_frame,
)

# The masking key of every masked example in RFC 6455 section 5.7.
RFC_MASK = bytes([0x37, 0xFA, 0x21, 0x3D])

# RFC 6455 section 5.7, byte for byte.
RFC_UNMASKED_HELLO = bytes([0x81, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F])
RFC_MASKED_HELLO = bytes([0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])
RFC_FRAGMENT_HEL = bytes([0x01, 0x03, 0x48, 0x65, 0x6C])
RFC_FRAGMENT_LO = bytes([0x80, 0x02, 0x6C, 0x6F])
RFC_UNMASKED_PING = bytes([0x89, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F])
RFC_MASKED_PONG = bytes([0x8A, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])
RFC_256_HEADER = bytes([0x82, 0x7E, 0x01, 0x00])
RFC_64K_HEADER = bytes([0x82, 0x7F, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00])


def ref_mask(data: bytes, mask: bytes) -> bytes:
    """Section 5.3 masking, one byte at a time (independent of the accelerator)."""
    return bytes(byte ^ mask[i % 4] for i, byte in enumerate(data))


# ----------------------------------------------------------------------------- opcodes


def test_opcode_values() -> None:
    """Opcodes have the values of RFC 6455 section 5.2."""
    assert [int(op) for op in Opcode] == [0x0, 0x1, 0x2, 0x8, 0x9, 0xA]


def test_opcode_classes() -> None:
    """Data and control opcodes are disjoint and control opcodes have the high bit set."""
    assert DATA_OPCODES == {Opcode.CONT, Opcode.TEXT, Opcode.BINARY}
    assert CONTROL_OPCODES == {Opcode.CLOSE, Opcode.PING, Opcode.PONG}
    assert all(op & 0x8 for op in CONTROL_OPCODES)
    assert not any(op & 0x8 for op in DATA_OPCODES)


def test_max_control_payload() -> None:
    """Control frames carry at most 125 bytes (section 5.5)."""
    assert MAX_CONTROL_PAYLOAD == 125


# ----------------------------------------------------------------------------- header lengths


@pytest.mark.parametrize("length", [0, 1, 124, 125])
def test_header_7bit_length(length: int) -> None:
    """Lengths up to 125 fit in the 7-bit field: a 2-byte header."""
    assert frame_header(Opcode.BINARY, length) == bytes([0x82, length])


@pytest.mark.parametrize("length", [126, 127, 256, 65535])
def test_header_16bit_length(length: int) -> None:
    """Lengths 126..65535 use marker 126 and a 16-bit big-endian length."""
    assert frame_header(Opcode.BINARY, length) == bytes([0x82, 126]) + length.to_bytes(2, "big")


@pytest.mark.parametrize("length", [65536, 65537, 2**32, 2**63 - 1])
def test_header_64bit_length(length: int) -> None:
    """Lengths from 65536 use marker 127 and a 64-bit big-endian length."""
    assert frame_header(Opcode.BINARY, length) == bytes([0x82, 127]) + length.to_bytes(8, "big")


@pytest.mark.parametrize(("length", "size"), [(125, 2), (126, 4), (65535, 4), (65536, 10)], ids=str)
def test_header_size_at_boundaries(length: int, size: int) -> None:
    """The header grows exactly at the 125/126 and 65535/65536 boundaries."""
    assert len(frame_header(Opcode.TEXT, length)) == size
    assert len(frame_header(Opcode.TEXT, length, masked=True)) == size


@pytest.mark.parametrize("length", [0, 125, 126, 65535, 65536])
def test_header_mask_bit(length: int) -> None:
    """masked=True sets the MASK bit and leaves the length encoding alone."""
    plain = frame_header(Opcode.TEXT, length)
    masked = frame_header(Opcode.TEXT, length, masked=True)
    assert masked[1] == plain[1] | 0x80
    assert masked[2:] == plain[2:]


# ----------------------------------------------------------------------------- FIN / RSV1


@pytest.mark.parametrize(
    ("fin", "rsv1", "first"),
    [(True, False, 0x81), (False, False, 0x01), (True, True, 0xC1), (False, True, 0x41)],
)
def test_header_fin_and_rsv1_bits(fin: bool, rsv1: bool, first: int) -> None:
    """FIN is bit 0x80 and RSV1 bit 0x40 of the first byte; RSV2/RSV3 stay clear."""
    assert frame_header(Opcode.TEXT, 3, fin=fin, rsv1=rsv1)[0] == first


@pytest.mark.parametrize("opcode", list(Opcode))
def test_header_opcode_in_low_nibble(opcode: Opcode) -> None:
    """The opcode is the low nibble of the first byte."""
    assert frame_header(opcode, 0)[0] & 0x0F == opcode


def test_serialize_continuation_frame() -> None:
    """A middle fragment is opcode 0 without FIN."""
    assert serialize_frame(Opcode.CONT, b"ab", fin=False) == b"\x00\x02ab"


def test_serialize_rsv1_masked() -> None:
    """RSV1 and masking combine."""
    out = serialize_frame(Opcode.TEXT, b"Hello", rsv1=True, mask=RFC_MASK)
    assert out == bytes([0xC1]) + RFC_MASKED_HELLO[1:]


# ----------------------------------------------------------------------------- RFC 5.7 examples


def test_rfc_single_frame_unmasked_text() -> None:
    """Section 5.7: a single-frame unmasked text message "Hello"."""
    assert serialize_frame(Opcode.TEXT, b"Hello") == RFC_UNMASKED_HELLO


def test_rfc_single_frame_masked_text() -> None:
    """Section 5.7: a single-frame masked text message "Hello"."""
    assert serialize_frame(Opcode.TEXT, b"Hello", mask=RFC_MASK) == RFC_MASKED_HELLO


def test_rfc_fragmented_unmasked_text() -> None:
    """Section 5.7: a fragmented unmasked text message, "Hel" then "lo"."""
    assert serialize_frame(Opcode.TEXT, b"Hel", fin=False) == RFC_FRAGMENT_HEL
    assert serialize_frame(Opcode.CONT, b"lo") == RFC_FRAGMENT_LO


def test_rfc_unmasked_ping() -> None:
    """Section 5.7: an unmasked ping with body "Hello"."""
    assert serialize_frame(Opcode.PING, b"Hello") == RFC_UNMASKED_PING


def test_rfc_masked_pong() -> None:
    """Section 5.7: a masked pong with body "Hello" answering that ping."""
    assert serialize_frame(Opcode.PONG, b"Hello", mask=RFC_MASK) == RFC_MASKED_PONG


def test_rfc_256_byte_binary_header() -> None:
    """Section 5.7: 256 bytes of binary data in a single unmasked frame."""
    payload = bytes(range(256))
    out = serialize_frame(Opcode.BINARY, payload)
    assert out[:4] == RFC_256_HEADER
    assert out[4:] == payload


def test_rfc_64k_binary_header() -> None:
    """Section 5.7: 64 KiB of binary data in a single unmasked frame."""
    payload = os.urandom(65536)
    out = serialize_frame(Opcode.BINARY, payload)
    assert out[:10] == RFC_64K_HEADER
    assert out[10:] == payload


def test_rfc_masked_payload_matches_reference() -> None:
    """The masked "Hello" payload is the section 5.3 XOR with the key."""
    assert RFC_MASKED_HELLO[6:] == ref_mask(b"Hello", RFC_MASK)


# The same examples parsed by the receiving side of the connection.


def test_rfc_examples_parse_on_client() -> None:
    """A client parses the unmasked examples into the messages and control frames they carry."""
    conn = Connection(Side.CLIENT)
    conn.receive_data(RFC_UNMASKED_HELLO + RFC_FRAGMENT_HEL + RFC_FRAGMENT_LO + RFC_UNMASKED_PING)
    conn.receive_data(RFC_256_HEADER + bytes(range(256)))
    assert conn.events_received() == [
        Message("Hello"),
        Message("Hello"),
        Ping(b"Hello"),
        Message(bytes(range(256))),
    ]
    assert conn.failure is None
    # The client answers the ping with a masked pong carrying the same body.
    pong = conn.data_to_send()
    assert pong[:2] == b"\x8a\x85"
    assert ref_mask(pong[6:], pong[2:6]) == b"Hello"


def test_rfc_examples_parse_on_server() -> None:
    """A server parses the masked examples (text and pong)."""
    conn = Connection(Side.SERVER)
    conn.receive_data(RFC_MASKED_HELLO + RFC_MASKED_PONG)
    assert conn.events_received() == [Message("Hello"), Pong(b"Hello")]
    assert conn.failure is None
    assert conn.data_to_send() == b""


def test_rfc_64k_example_parses() -> None:
    """The 64 KiB example parses on a client, fed in two pieces."""
    payload = os.urandom(65536)
    conn = Connection(Side.CLIENT)
    data = RFC_64K_HEADER + payload
    conn.receive_data(data[:5])
    conn.receive_data(data[5:])
    assert conn.events_received() == [Message(payload)]


# ----------------------------------------------------------------------------- masking


@settings(max_examples=100, deadline=None)
@given(payload=st.binary(max_size=300), mask=st.binary(min_size=4, max_size=4))
def test_serialize_masked_matches_reference(payload: bytes, mask: bytes) -> None:
    """A masked frame is header + key + payload XORed with the key (section 5.3)."""
    out = serialize_frame(Opcode.BINARY, payload, mask=mask)
    header = frame_header(Opcode.BINARY, len(payload), masked=True)
    assert out == header + mask + ref_mask(payload, mask)


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_serialize_accepts_bytes_like(kind: type) -> None:
    """serialize_frame takes any bytes-like payload, masked or not."""
    payload = kind(b"Hello")
    assert serialize_frame(Opcode.TEXT, payload) == RFC_UNMASKED_HELLO
    assert serialize_frame(Opcode.TEXT, payload, mask=RFC_MASK) == RFC_MASKED_HELLO


def test_mask_source_gives_4_byte_keys() -> None:
    """MaskSource.next() returns 4-byte keys, across several refills of its block."""
    source = MaskSource()
    keys = [source.next() for _ in range(3000)]
    assert all(isinstance(key, bytes) and len(key) == 4 for key in keys)
    # 3000 random 32-bit keys: a collision has probability ~0.1%; all-equal is impossible.
    assert len(set(keys)) > 2900


def test_mask_source_reads_urandom_in_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """One os.urandom call yields 1024 keys, taken in order from the block."""
    calls: list[int] = []
    counter = iter(range(1_000_000))

    def fake_urandom(size: int) -> bytes:
        """Counting bytes instead of random ones, recording the request size."""
        calls.append(size)
        return bytes(next(counter) & 0xFF for _ in range(size))

    monkeypatch.setattr("tidewire.protocol.frames.os.urandom", fake_urandom)
    source = MaskSource()
    keys = [source.next() for _ in range(1025)]
    assert calls == [4096, 4096]
    assert keys[0] == bytes([0, 1, 2, 3])
    assert keys[1] == bytes([4, 5, 6, 7])
    assert keys[1024] == bytes([0, 1, 2, 3])  # the second block starts over at 4096 & 0xFF == 0


def test_client_frames_use_fresh_keys() -> None:
    """A client masks every frame with a new key from its MaskSource."""
    conn = Connection(Side.CLIENT)
    for _ in range(50):
        conn.send_binary(b"x")
    out = conn.data_to_send()
    keys = {out[i + 2 : i + 6] for i in range(0, len(out), 7)}
    assert len(keys) > 45
