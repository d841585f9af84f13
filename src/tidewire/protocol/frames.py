"""Frame opcodes and header serialization (RFC 6455 section 5.2).

Parsing lives in :mod:`tidewire.protocol.connection`, inlined in its receive
loop because per-frame call overhead dominates small messages; this module
holds the constants and the sending side, which the transport also uses to
frame a broadcast once for many receivers.
"""

from __future__ import annotations

import enum
import os
import struct

from tidewire._types import BytesLike
from tidewire.protocol._accel import apply_mask

__all__ = [
    "Opcode",
    "CONTROL_OPCODES",
    "DATA_OPCODES",
    "MAX_CONTROL_PAYLOAD",
    "serialize_frame",
    "frame_header",
    "MaskSource",
]

#: RFC 6455 section 5.5: "All control frames MUST have a payload length of 125 bytes or less".
MAX_CONTROL_PAYLOAD = 125


class Opcode(enum.IntEnum):
    """Frame opcodes (RFC 6455 section 5.2); 0x3-0x7 and 0xB-0xF are reserved."""

    CONT = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


DATA_OPCODES = frozenset({Opcode.CONT, Opcode.TEXT, Opcode.BINARY})
CONTROL_OPCODES = frozenset({Opcode.CLOSE, Opcode.PING, Opcode.PONG})

_pack_b = struct.Struct("!BB").pack
_pack_h = struct.Struct("!BBH").pack
_pack_q = struct.Struct("!BBQ").pack


def frame_header(
    opcode: int, length: int, *, fin: bool = True, rsv1: bool = False, masked: bool = False
) -> bytes:
    """The 2-14 byte frame header, without the masking key (section 5.2)."""
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    m = 0x80 if masked else 0
    if length < 126:
        return _pack_b(b0, m | length)
    if length < 0x10000:
        return _pack_h(b0, m | 126, length)
    return _pack_q(b0, m | 127, length)


class MaskSource:
    """Masking keys from os.urandom, read in blocks (section 5.3: unpredictable keys).

    One ``os.urandom`` call per frame costs a system call; reading 4 KiB at a
    time gives 1024 keys per call with the same entropy source.
    """

    __slots__ = ("_block", "_pos")

    _BLOCK = 4096

    def __init__(self) -> None:
        self._block = b""
        self._pos = 0

    def next(self) -> bytes:
        """Return a fresh 4-byte masking key."""
        pos = self._pos
        if pos + 4 > len(self._block):
            self._block = os.urandom(self._BLOCK)
            pos = 0
        self._pos = pos + 4
        return self._block[pos : pos + 4]


def serialize_frame(
    opcode: int,
    payload: BytesLike,
    *,
    fin: bool = True,
    rsv1: bool = False,
    mask: bytes | None = None,
) -> bytes:
    """Serialize one frame; ``mask`` is the 4-byte key for client frames, None for server frames."""
    length = len(payload)
    if mask is None:
        return frame_header(opcode, length, fin=fin, rsv1=rsv1) + payload
    return (
        frame_header(opcode, length, fin=fin, rsv1=rsv1, masked=True)
        + mask
        + apply_mask(payload, mask)
    )
