"""Masking and UTF-8 accelerators: every implementation in _accel.IMPLEMENTATIONS, same results."""

from __future__ import annotations

import array
import importlib
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from itertools import product
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidewire.protocol import _accel

NAMES = sorted(_accel.IMPLEMENTATIONS)
PY = _accel.IMPLEMENTATIONS["python"]

each_impl = pytest.mark.parametrize(
    "impl", [_accel.IMPLEMENTATIONS[name] for name in NAMES], ids=NAMES
)

# --------------------------------------------------------------------------------------
# Reference models, written independently of both implementations.
# --------------------------------------------------------------------------------------


def ref_mask(data: bytes, mask: bytes, offset: int = 0) -> bytes:
    """The RFC 6455 definition, one byte at a time."""
    return bytes(byte ^ mask[(i + offset) % 4] for i, byte in enumerate(data))


def decodes(data: bytes) -> bool:
    """True if Python's strict codec accepts data."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# Continuation bytes at the edges of every second-byte range of RFC 3629: if any
# completion of a prefix exists, one made of these bytes exists.
_EDGES = (0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF)
_COMPLETIONS = [bytes(c) for k in range(1, 4) for c in product(_EDGES, repeat=k)]


def ref_is_prefix(data: bytes) -> bool:
    """True if data, or data plus at most 3 more bytes, is accepted by the strict codec."""
    return decodes(data) or any(decodes(data + c) for c in _COMPLETIONS)


def ref_state(data: bytes) -> int:
    """The utf8_check result for data fed from state 0, from the codec alone."""
    if decodes(data):
        return 0
    if not ref_is_prefix(data):
        return -1
    lead = max(i for i, byte in enumerate(data) if byte >= 0xC0)
    pending = data[lead:]
    return (len(pending) << 24) | int.from_bytes(pending, "big")


def first_impossible(data: bytes) -> int | None:
    """Index of the first byte after which data cannot be a prefix of valid UTF-8."""
    if ref_is_prefix(data):
        return None
    lo, hi = 0, len(data) - 1  # data[:hi + 1] is not a prefix; find the smallest such hi
    while lo < hi:
        mid = (lo + hi) // 2
        if ref_is_prefix(data[: mid + 1]):
            lo = mid + 1
        else:
            hi = mid
    return lo


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """Cut data at the given positions (taken modulo len + 1, in any order)."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)] or [b""]


def feed(check: Callable[..., int], chunks: Sequence[bytes]) -> list[int]:
    """Feed chunks to utf8_check, returning the state after each one."""
    states = []
    state = 0
    for chunk in chunks:
        state = check(chunk, state)
        states.append(state)
    return states


# --------------------------------------------------------------------------------------
# Strategies.
# --------------------------------------------------------------------------------------

masks = st.binary(min_size=4, max_size=4)
offsets = st.integers(min_value=-(2**70), max_value=2**70)
payloads = st.binary(max_size=300)
cut_lists = st.lists(st.integers(min_value=0, max_value=10**6), max_size=8)
# Any code point, surrogates included, so encodings of invalid scalars show up too.
any_char = st.integers(min_value=0, max_value=0x10FFFF).map(chr)
NEVER_VALID = [0xC0, 0xC1, *range(0xF5, 0x100)]
TRICKY = [
    b"\xc0\x80",
    b"\xc1\xbf",
    b"\xe0\x80\x80",
    b"\xe0\x9f\xbf",
    b"\xed\xa0\x80",
    b"\xed\xbf\xbf",
    b"\xf0\x80\x80\x80",
    b"\xf0\x8f\xbf\xbf",
    b"\xf4\x90\x80\x80",
    b"\xf4\x8f\xbf\xbf",
    b"\xf8\x88\x80\x80\x80",
    b"\xfc\x84\x80\x80\x80\x80",
    b"\x80",
    b"\xbf",
    b"\xef\xbf\xbf",
    b"\xee\x80\x80",
]
utf8ish = st.lists(
    st.one_of(
        st.text(max_size=8).map(str.encode),
        any_char.map(lambda c: c.encode("utf-8", "surrogatepass")),
        any_char.map(lambda c: c.encode("utf-8", "surrogatepass")[:-1]),
        st.binary(min_size=1, max_size=4),
        st.sampled_from(TRICKY),
    ),
    max_size=12,
).map(b"".join)


# --------------------------------------------------------------------------------------
# apply_mask
# --------------------------------------------------------------------------------------


@each_impl
def test_rfc6455_masked_hello(impl: ModuleType) -> None:
    """RFC 6455 section 5.7: the masked "Hello" frame payload unmasks to b"Hello"."""
    mask = bytes.fromhex("37fa213d")
    masked = bytes.fromhex("7f9f4d5158")
    assert impl.apply_mask(masked, mask) == b"Hello"
    assert impl.apply_mask(b"Hello", mask) == masked
    assert impl.apply_mask(masked[:2], mask) + impl.apply_mask(masked[2:], mask, 2) == b"Hello"


@each_impl
def test_mask_empty_input(impl: ModuleType) -> None:
    """Masking no bytes returns b"" at any offset and for every buffer type."""
    for empty in (b"", bytearray(), memoryview(b"")):
        for offset in range(5):
            result = impl.apply_mask(empty, b"\x01\x02\x03\x04", offset)
            assert result == b"" and type(result) is bytes


@each_impl
def test_mask_offsets_0_to_7(impl: ModuleType) -> None:
    """Offsets 0..7 rotate the mask by offset % 4, for lengths across the word boundaries."""
    mask = b"\x01\x20\x0f\xf0"
    for offset in range(8):
        for size in range(0, 70):
            data = bytes(range(7, 7 + size))
            assert impl.apply_mask(data, mask, offset) == ref_mask(data, mask, offset)


@each_impl
def test_mask_wrong_length_raises(impl: ModuleType) -> None:
    """A mask that is not exactly 4 bytes raises ValueError."""
    for mask in (b"", b"\x01", b"\x01\x02\x03", b"\x01\x02\x03\x04\x05", bytes(8)):
        with pytest.raises(ValueError):
            impl.apply_mask(b"payload", mask)
        with pytest.raises(ValueError):
            impl.apply_mask(b"", mask)


@each_impl
def test_mask_buffer_types(impl: ModuleType) -> None:
    """bytes, bytearray, memoryview and array inputs are read as raw bytes; result is bytes."""
    data = bytes(range(256)) * 3
    mask = b"\xde\xad\xbe\xef"
    expected = ref_mask(data, mask, 3)
    ints = array.array("I", data[:768])
    for candidate in (data, bytearray(data), memoryview(data), ints):
        result = impl.apply_mask(candidate, mask, 3)
        assert type(result) is bytes and result == expected
    assert impl.apply_mask(data, bytearray(mask), 3) == expected
    assert impl.apply_mask(data, memoryview(mask), offset=3) == expected
    assert impl.apply_mask(data=data, mask=mask, offset=3) == expected


@each_impl
def test_mask_bad_arguments(impl: ModuleType) -> None:
    """Non-buffers, non-contiguous views, non-int offsets and bad arity raise the same types."""
    with pytest.raises(TypeError):
        impl.apply_mask("text", b"abcd")
    with pytest.raises(TypeError):
        impl.apply_mask(b"data", "abcd")
    with pytest.raises(TypeError):
        impl.apply_mask(b"data", b"abcd", 1.0)
    with pytest.raises(TypeError):
        impl.apply_mask(b"data")
    with pytest.raises(TypeError):
        impl.apply_mask(b"data", b"abcd", 0, 1)
    with pytest.raises(TypeError):
        impl.apply_mask(b"data", b"abcd", offest=1)
    with pytest.raises(BufferError):
        impl.apply_mask(memoryview(b"abcdefgh")[::2], b"abcd")


@each_impl
def test_mask_unaligned_views(impl: ModuleType) -> None:
    """Views starting at every alignment and of every small length mask correctly."""
    buf = bytes((i * 37 + 11) & 0xFF for i in range(200))
    mask = b"\x9a\x00\xff\x5c"
    view = memoryview(buf)
    for start in range(16):
        for size in (0, 1, 7, 8, 9, 31, 32, 33, 63, 64, 65, 100, 184 - start):
            piece = view[start : start + size]
            for offset in (0, 1, 2, 3):
                assert impl.apply_mask(piece, mask, offset) == ref_mask(bytes(piece), mask, offset)


@each_impl
@given(data=payloads, mask=masks, offset=offsets)
def test_mask_is_involution(impl: ModuleType, data: bytes, mask: bytes, offset: int) -> None:
    """Masking twice with the same mask and offset gives back the input."""
    assert impl.apply_mask(impl.apply_mask(data, mask, offset), mask, offset) == data


@each_impl
@given(data=payloads, mask=masks, cuts=cut_lists, start=st.integers(0, 2**40))
def test_chunked_unmask_equals_whole(
    impl: ModuleType, data: bytes, mask: bytes, cuts: list[int], start: int
) -> None:
    """Unmasking in pieces, passing the running offset, equals unmasking all at once."""
    whole = impl.apply_mask(data, mask, start)
    pieces = []
    done = start
    for chunk in split(data, cuts):
        pieces.append(impl.apply_mask(chunk, mask, done))
        done += len(chunk)
    assert b"".join(pieces) == whole


@each_impl
@given(data=st.binary(max_size=2000), mask=masks, offset=offsets, start=st.integers(0, 15))
def test_mask_matches_python_and_reference(
    impl: ModuleType, data: bytes, mask: bytes, offset: int, start: int
) -> None:
    """Each implementation agrees with the Python one and with the per-byte definition."""
    view = memoryview(data)[start:]
    result = impl.apply_mask(view, mask, offset)
    assert result == PY.apply_mask(view, mask, offset)
    assert result == ref_mask(bytes(view), mask, offset)


# --------------------------------------------------------------------------------------
# UTF-8
# --------------------------------------------------------------------------------------


@each_impl
def test_utf8_every_plane_valid(impl: ModuleType) -> None:
    """Characters from all 17 planes, including each plane's edges, validate to state 0."""
    for plane in range(17):
        base = plane << 16
        points = [base, base + 1, base + 0x7F, base + 0x80, base + 0x7FF, base + 0x800]
        points += [base + 0xD7FF, base + 0xE000, base + 0xFFFD, base + 0xFFFF]
        text = "".join(chr(p) for p in points if not 0xD800 <= p <= 0xDFFF)
        encoded = text.encode("utf-8")
        assert impl.utf8_check(encoded) == 0
        assert impl.utf8_valid(encoded) is True
        assert feed(impl.utf8_check, [encoded[i : i + 1] for i in range(len(encoded))])[-1] == 0


@each_impl
@given(text=st.text(max_size=200))
def test_utf8_valid_text_roundtrips(impl: ModuleType, text: str) -> None:
    """Any encoded str is valid: state 0 and utf8_valid True, also as bytearray/memoryview."""
    encoded = text.encode("utf-8")
    assert impl.utf8_check(encoded) == 0
    assert impl.utf8_check(bytearray(encoded), 0) == 0
    assert impl.utf8_check(data=memoryview(encoded), state=0) == 0
    assert impl.utf8_valid(encoded) is True


@each_impl
@given(text=st.text(max_size=40))
def test_utf8_split_anywhere(impl: ModuleType, text: str) -> None:
    """Splitting a valid encoding at every position never gives -1 and ends in state 0."""
    encoded = text.encode("utf-8")
    for i in range(len(encoded) + 1):
        state = impl.utf8_check(encoded[:i])
        assert state == ref_state(encoded[:i]) and state != -1
        assert impl.utf8_check(encoded[i:], state) == 0
    states = feed(impl.utf8_check, [encoded[i : i + 1] for i in range(len(encoded))])
    assert -1 not in states and states[-1:] in ([], [0])


@each_impl
@given(data=utf8ish)
@settings(deadline=None)
def test_utf8_verdict_matches_codec(impl: ModuleType, data: bytes) -> None:
    """The verdict equals the strict codec's, and the state equals the reference state."""
    assert impl.utf8_valid(data) is decodes(data)
    assert (impl.utf8_check(data) == 0) is decodes(data)
    assert impl.utf8_check(data) == ref_state(data)


@each_impl
@given(data=st.binary(max_size=64))
def test_utf8_random_bytes_match_codec(impl: ModuleType, data: bytes) -> None:
    """On uniformly random bytes the whole-buffer verdict equals bytes.decode('utf-8')."""
    assert impl.utf8_valid(data) is decodes(data)
    assert impl.utf8_check(data) == ref_state(data)


@each_impl
@given(
    text=st.text(max_size=30),
    bad=st.sampled_from(NEVER_VALID),
    size=st.integers(min_value=1, max_value=9),
)
@settings(deadline=None)
def test_utf8_fail_fast_inserted_byte(impl: ModuleType, text: str, bad: int, size: int) -> None:
    """An impossible byte inserted at any position makes exactly its chunk return -1."""
    encoded = text.encode("utf-8")
    for pos in range(len(encoded) + 1):
        data = encoded[:pos] + bytes([bad]) + encoded[pos:]
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        states = feed(impl.utf8_check, chunks)
        bad_chunk = pos // size
        assert all(s != -1 for s in states[:bad_chunk])
        assert states[bad_chunk] == -1
        assert all(s == -1 for s in states[bad_chunk:])


@each_impl
@given(data=utf8ish, cuts=cut_lists)
@settings(deadline=None)
def test_utf8_fail_fast_first_impossible(impl: ModuleType, data: bytes, cuts: list[int]) -> None:
    """-1 first appears at the chunk holding the first byte that no completion can save."""
    chunks = split(data, cuts)
    states = feed(impl.utf8_check, chunks)
    bad = first_impossible(data)
    ends = [sum(len(c) for c in chunks[: i + 1]) for i in range(len(chunks))]
    for state, end in zip(states, ends, strict=True):
        if bad is not None and end > bad:
            assert state == -1
        else:
            assert state == ref_state(data[:end])


@each_impl
@given(data=utf8ish, cuts=cut_lists)
@settings(deadline=None)
def test_utf8_chunked_matches_python(impl: ModuleType, data: bytes, cuts: list[int]) -> None:
    """Random chunkings give the same state ints as the Python implementation."""
    chunks = split(data, cuts)
    assert feed(impl.utf8_check, chunks) == feed(PY.utf8_check, chunks)


EDGE_VECTORS: list[tuple[bytes, int]] = [
    (b"", 0),
    (b"abc", 0),
    (b"\x00", 0),
    (b"\x7f", 0),
    (b"\xc2\x80", 0),
    (b"\xdf\xbf", 0),
    (b"\xe0\xa0\x80", 0),
    (b"\xef\xbf\xbf", 0),
    (b"\xed\x9f\xbf", 0),
    (b"\xee\x80\x80", 0),
    (b"\xf0\x90\x80\x80", 0),
    (b"\xf4\x8f\xbf\xbf", 0),  # U+10FFFF, the largest code point
    (b"\xc0\x80", -1),  # overlong NUL
    (b"\xc1\xbf", -1),
    (b"\xe0\x80\x80", -1),  # overlong
    (b"\xe0\x9f\xbf", -1),
    (b"\xf0\x80\x80\x80", -1),  # overlong
    (b"\xf0\x8f\xbf\xbf", -1),
    (b"\xed\xa0\x80", -1),  # U+D800
    (b"\xed\xbf\xbf", -1),  # U+DFFF
    (b"\xf4\x90\x80\x80", -1),  # U+110000
    (b"\xf8\x88\x80\x80\x80", -1),  # 5-byte form
    (b"\xfc\x84\x80\x80\x80\x80", -1),  # 6-byte form
    (b"\x80", -1),  # lone continuation bytes
    (b"\xbf", -1),
    (b"a\x80b", -1),
    (b"\xc2\x80\x80", -1),
    (b"\xc0", -1),  # impossible lead bytes fail without waiting for more input
    (b"\xc1", -1),
    (b"\xf5", -1),
    (b"\xff", -1),
    (b"\xed\xa0", -1),
    (b"\xe0\x80", -1),
    (b"\xf0\x8f", -1),
    (b"\xf4\x90", -1),
    (b"\xc2", 0x01_0000C2),
    (b"\xe0\xa0", 0x02_00E0A0),
    (b"\xed\x9f", 0x02_00ED9F),
    (b"\xf0\x90\x80", 0x03_F09080),
    (b"\xf4\x8f\xbf", 0x03_F48FBF),
    (b"abc\xe2\x82", 0x02_00E282),
    (b"\xe2\x82\xac\xf0", 0x01_0000F0),
]


@each_impl
@pytest.mark.parametrize(("data", "expected"), EDGE_VECTORS, ids=lambda v: repr(v))
def test_utf8_edge_vectors(impl: ModuleType, data: bytes, expected: int) -> None:
    """Known overlong, surrogate, out-of-range, truncated and boundary vectors."""
    assert impl.utf8_check(data) == expected
    assert impl.utf8_check(data, 0) == expected
    assert impl.utf8_valid(data) is (expected == 0)
    assert decodes(data) is (expected == 0)


@each_impl
def test_utf8_fast_path_boundaries(impl: ModuleType) -> None:
    """Multi-byte and invalid bytes after ASCII runs of every length up to 80 are handled."""
    for run in range(81):
        ascii_run = b"x" * run
        for suffix in (b"\xc3\xa9", b"\xe2\x82\xac", b"\xf0\x9f\x98\x80", b"\xc3", b"\xf0\x9f"):
            for after in (b"", b"y" * 40):
                data = ascii_run + suffix + after
                assert impl.utf8_check(data) == ref_state(data)
        for bad in (b"\x80", b"\xff", b"\xed\xa0\x80", b"\xe0\x80"):
            assert impl.utf8_check(ascii_run + bad + b"z" * 40) == -1
            assert impl.utf8_valid(ascii_run + bad) is False


@each_impl
def test_utf8_state_continuation(impl: ModuleType) -> None:
    """Pending states continue correctly, -1 is sticky, and empty chunks keep the state."""
    state = impl.utf8_check(b"\xf0")
    assert state == 0x01_0000F0
    assert impl.utf8_check(b"", state) == state
    assert impl.utf8_check(b"\x8f", state) == -1  # F0 8F is overlong
    state = impl.utf8_check(b"\x9f", state)
    assert state == 0x02_00F09F
    assert impl.utf8_check(b"\x98", state) == 0x03_F09F98
    assert impl.utf8_check(b"\x98\x80", state) == 0
    assert impl.utf8_check(b"\x98\x80\xe2", state) == 0x01_0000E2
    assert impl.utf8_check(b"\x98\x80a", state) == 0
    assert impl.utf8_check(b"\x98a", state) == -1
    for data in (b"", b"abc", b"\xc2\x80"):
        assert impl.utf8_check(data, -1) == -1


@each_impl
def test_utf8_malformed_state_raises(impl: ModuleType) -> None:
    """States no call could have returned raise ValueError; non-ints raise TypeError."""
    malformed = [
        1,
        -2,
        0x01_000000,  # pending NUL: not a lead byte
        0x01_000080,  # continuation byte as lead
        0x01_0000C0,  # impossible lead
        0x01_0100C2,  # value wider than the length
        0x02_00C280,  # a complete sequence is not pending
        0x02_00E080,  # impossible so far
        0x02_0000C2,  # leading NUL byte
        0x04_F0908080,
        2**70,
        -(2**70),
    ]
    for state in malformed:
        with pytest.raises(ValueError):
            impl.utf8_check(b"", state)
        with pytest.raises(ValueError):
            impl.utf8_check(b"\x80", state)
    with pytest.raises(TypeError):
        impl.utf8_check(b"", 1.0)
    with pytest.raises(TypeError):
        impl.utf8_check("text")
    with pytest.raises(TypeError):
        impl.utf8_valid("text")
    with pytest.raises(TypeError):
        impl.utf8_check(b"", 0, 0)
    with pytest.raises(BufferError):
        impl.utf8_check(memoryview(b"abcdef")[::2])


# --------------------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------------------


def test_accel_exports_chosen_implementation() -> None:
    """_accel exports the C functions exactly when HAS_SPEEDUPS, else the Python ones."""
    chosen = _accel.IMPLEMENTATIONS["c" if _accel.HAS_SPEEDUPS else "python"]
    assert _accel.apply_mask is chosen.apply_mask
    assert _accel.utf8_check is chosen.utf8_check
    assert _accel.utf8_valid is chosen.utf8_valid
    assert _accel.HAS_SPEEDUPS is ("c" in _accel.IMPLEMENTATIONS)


def test_no_speedups_env_forces_python() -> None:
    """TIDEWIRE_NO_SPEEDUPS=1 makes _accel pick the pure-Python path and skip the C module."""
    code = (
        "import sys; from tidewire.protocol import _accel, _purepy; "
        "assert not _accel.HAS_SPEEDUPS and list(_accel.IMPLEMENTATIONS) == ['python']; "
        "assert _accel.apply_mask is _purepy.apply_mask; "
        "assert 'tidewire.protocol._speedups' not in sys.modules"
    )
    env = {**os.environ, "TIDEWIRE_NO_SPEEDUPS": "1"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True)


def test_speedups_built_when_required() -> None:
    """With TIDEWIRE_REQUIRE_SPEEDUPS set (CI builds with gcc), the C module imports and is used."""
    if not os.environ.get("TIDEWIRE_REQUIRE_SPEEDUPS"):
        pytest.skip("TIDEWIRE_REQUIRE_SPEEDUPS is not set")
    importlib.import_module("tidewire.protocol._speedups")
    forced_off = os.environ.get("TIDEWIRE_NO_SPEEDUPS", "") not in ("", "0")
    assert _accel.HAS_SPEEDUPS is not forced_off
