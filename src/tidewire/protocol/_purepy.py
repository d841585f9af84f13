"""Pure-Python twins of the C accelerator in ``_speedups.c``.

Every function here returns exactly what its C twin returns on every input, and raises
the same exception types.  Import the chosen implementation from
:mod:`tidewire.protocol._accel`, not from here.
"""

from __future__ import annotations

import operator
import struct

from tidewire._types import BytesLike

__all__ = [
    "Assembler",
    "apply_mask",
    "parse_frames",
    "unmask_into",
    "utf8_check",
    "utf8_valid",
]

_BAD_STATE = "invalid UTF-8 validator state"


def _byte_view(obj: BytesLike) -> memoryview:
    """Return a flat unsigned-byte view of a C-contiguous buffer (as PyBUF_SIMPLE does)."""
    view = memoryview(obj)
    if not view.c_contiguous:
        raise BufferError("a C-contiguous buffer is required")
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    return view


def apply_mask(data: BytesLike, mask: BytesLike, offset: int = 0) -> bytes:
    """Return ``data`` with byte ``i`` XORed with ``mask[(i + offset) % 4]`` (RFC 6455 5.3).

    ``mask`` must be exactly 4 bytes.  ``offset`` is the number of payload bytes already
    processed, so a payload can be unmasked in pieces as it arrives.
    """
    view = _byte_view(data)
    key = _byte_view(mask)
    if key.nbytes != 4:
        raise ValueError(f"mask must be exactly 4 bytes, got {key.nbytes}")
    rot = operator.index(offset) & 3  # == offset % 4, also for negative offsets
    size = view.nbytes
    if size == 0:
        return b""
    raw = key.tobytes()
    raw = raw[rot:] + raw[:rot]
    # One big-integer XOR over the whole buffer beats a per-byte loop by a wide margin.
    stream = (raw * ((size + 3) >> 2))[:size]
    value = int.from_bytes(view, "big") ^ int.from_bytes(stream, "big")
    return value.to_bytes(size, "big")


def _lead_info(lead: int) -> tuple[int, int, int]:
    """Return (sequence length, low, high bound of the second byte) for a lead byte.

    The length is 0 for a byte that can never start a multi-byte sequence.  Ranges are
    RFC 3629 section 4: they exclude overlongs, surrogates and code points > U+10FFFF.
    """
    if 0xC2 <= lead <= 0xDF:
        return 2, 0x80, 0xBF
    if 0xE0 <= lead <= 0xEF:
        return 3, 0xA0 if lead == 0xE0 else 0x80, 0x9F if lead == 0xED else 0xBF
    if 0xF0 <= lead <= 0xF4:
        return 4, 0x90 if lead == 0xF0 else 0x80, 0x8F if lead == 0xF4 else 0xBF
    return 0, 0, 0


def _pending_state(tail: bytes) -> int:
    """Return the state for an incomplete sequence ``tail``, or -1 if it is impossible."""
    size = len(tail)
    length, low, high = _lead_info(tail[0])
    if not size < length:
        return -1
    if size > 1 and not low <= tail[1] <= high:
        return -1
    if size > 2 and not 0x80 <= tail[2] <= 0xBF:
        return -1
    return (size << 24) | int.from_bytes(tail, "big")


def _check_from_boundary(view: memoryview) -> int:
    """utf8_check for data that starts on a character boundary."""
    try:
        str(view, "utf-8")
    except UnicodeDecodeError as exc:
        # The strict codec stops at the first error.  If that error is a sequence cut off
        # by the end of the data (exc.end == len and reason "unexpected end of data"),
        # everything before exc.start is valid and the verdict is that of the tail; the
        # RFC 3629 table is the authority on whether the tail is a valid prefix.
        size = view.nbytes
        if exc.end == size and 1 <= size - exc.start <= 3:
            return _pending_state(view[exc.start :].tobytes())
        return -1
    return 0


def utf8_check(data: BytesLike, state: int = 0) -> int:
    """Validate one more chunk of a UTF-8 stream, strictly and fail-fast (RFC 3629).

    ``state`` is 0 (character boundary), -1 (already invalid) or
    ``(len(pending) << 24) | int.from_bytes(pending, "big")`` for the 1..3 leading bytes of
    a sequence that is valid so far.  Returns -1 as soon as the bytes seen so far cannot
    start valid UTF-8, otherwise the new state; a message is valid when the last call
    returns exactly 0.
    """
    view = _byte_view(data)
    state = operator.index(state)
    if state == 0:
        return _check_from_boundary(view)
    if state == -1:
        return -1
    length = state >> 24
    if state < 0 or not 1 <= length <= 3 or (state & 0xFFFFFF) >> (8 * length):
        raise ValueError(_BAD_STATE)
    pending = (state & 0xFFFFFF).to_bytes(length, "big")
    if _pending_state(pending) != state:
        raise ValueError(_BAD_STATE)
    # Complete the pending sequence from the head of data, then go on from a boundary.
    need = _lead_info(pending[0])[0] - length
    head = pending + view[:need].tobytes()
    if len(head) < length + need:
        return _pending_state(head)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return -1
    return _check_from_boundary(view[need:])


def utf8_valid(data: BytesLike) -> bool:
    """Return True if ``data`` is complete, strictly valid UTF-8 (RFC 3629)."""
    view = _byte_view(data)
    try:
        str(view, "utf-8")
    except UnicodeDecodeError:
        return False
    return True


_unpack_h = struct.Struct("!H").unpack_from
_unpack_q = struct.Struct("!Q").unpack_from


def parse_frames(
    buf: BytesLike, pos: int, masked: bool, limit: int
) -> tuple[list[str | bytes], int]:
    """Parse complete, unfragmented, uncompressed text and binary frames from ``pos``.

    Takes every frame with FIN set, RSV clear, opcode 1 or 2, the mask bit equal
    to ``masked``, a payload of at most ``limit`` bytes (``limit < 0``: no limit)
    and its whole payload present; text is decoded as strict UTF-8.  Stops at
    the first frame that does not qualify, leaving it to the caller.
    """
    if not 0 <= pos <= len(buf):
        raise ValueError("pos out of range")
    data = buf if isinstance(buf, bytes | bytearray) else bytes(buf)
    items: list[str | bytes] = []
    end = len(data)
    while end - pos >= 2:
        b0 = data[pos]
        if b0 & 0xF0 != 0x80:
            break
        opcode = b0 & 0x0F
        if opcode != 1 and opcode != 2:
            break
        b1 = data[pos + 1]
        if bool(b1 & 0x80) is not bool(masked):
            break
        length = b1 & 0x7F
        hlen = 2
        if length == 126:
            if end - pos < 4:
                break
            length = _unpack_h(data, pos + 2)[0]
            hlen = 4
        elif length == 127:
            if end - pos < 10:
                break
            length = _unpack_q(data, pos + 2)[0]
            if length >> 63:
                break
            hlen = 10
        if masked:
            hlen += 4
        if end - pos < hlen or (0 <= limit < length) or end - pos - hlen < length:
            break
        start = pos + hlen
        payload = bytes(data[start : start + length])
        if masked:
            payload = apply_mask(payload, data[start - 4 : start])
        if opcode == 1:
            try:
                items.append(payload.decode())
            except UnicodeDecodeError:
                break
        else:
            items.append(payload)
        pos = start + length
    return items, pos


def unmask_into(
    dest: bytearray | memoryview,
    dest_offset: int,
    data: BytesLike,
    mask: BytesLike | None,
    offset: int,
    utf8_state: int | None = None,
) -> int | None:
    """Write ``data`` XOR ``mask`` (rotated by ``offset``) into ``dest`` at ``dest_offset``.

    ``mask`` None copies ``data`` unchanged; ValueError when it does not fit.
    With ``utf8_state`` given, returns the :func:`utf8_check` state after
    validating the bytes written; otherwise None.
    """
    size = len(data)
    if dest_offset < 0 or size > len(dest) - dest_offset:
        raise ValueError("unmask_into: data does not fit in dest")
    if mask is not None:
        data = apply_mask(data, mask, offset)
    dest[dest_offset : dest_offset + size] = data
    if utf8_state is None:
        return None
    return utf8_check(data, utf8_state)


class Assembler:
    """Collects one message of known size, unmasking each piece into one buffer.

    ``feed`` returns False as soon as a text message cannot be valid UTF-8;
    ``finish`` returns str (text) or bytes (binary), or None for text that
    ends inside a UTF-8 sequence.
    """

    __slots__ = ("_buf", "_filled", "_text", "_state")

    def __init__(self, size: int, text: bool) -> None:
        if size < 0:
            raise ValueError("Assembler: negative size")
        self._buf: bytearray | None = bytearray(size)
        self._filled = 0
        self._text = bool(text)
        self._state = 0

    def feed(self, data: BytesLike, mask: BytesLike | None, offset: int) -> bool:
        """Append ``data`` XOR ``mask`` (rotated by ``offset``); False on invalid UTF-8."""
        buf = self._buf
        if buf is None:
            raise ValueError("Assembler already finished")
        if len(data) > len(buf) - self._filled:
            raise ValueError("Assembler: more data than the declared size")
        start = self._filled
        state = unmask_into(buf, start, data, mask, offset, self._state if self._text else None)
        self._filled = start + len(data)
        if state is not None:
            self._state = state
            if state < 0:
                return False
        return True

    def finish(self) -> str | bytes | None:
        """The message once every byte was fed (ValueError before)."""
        buf = self._buf
        if buf is None:
            raise ValueError("Assembler already finished")
        if self._filled != len(buf):
            raise ValueError(f"Assembler: {self._filled} of {len(buf)} bytes fed")
        self._buf = None
        if not self._text:
            return bytes(buf)
        if self._state != 0:
            return None
        return buf.decode()
