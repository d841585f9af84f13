"""parse_frames, unmask_into and Assembler: C and Python paths give identical results."""

from __future__ import annotations

from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidewire.protocol import _accel
from tidewire.protocol.connection import Connection, Side

NAMES = sorted(_accel.IMPLEMENTATIONS)
each_impl = pytest.mark.parametrize(
    "impl", [_accel.IMPLEMENTATIONS[name] for name in NAMES], ids=NAMES
)
PY = _accel.IMPLEMENTATIONS["python"]

messages = st.lists(
    st.one_of(st.text(max_size=300), st.binary(max_size=300)), min_size=0, max_size=8
)


def stream(items: list[str | bytes], side: Side) -> bytes:
    """Frames for ``items`` as ``side`` would send them."""
    conn = Connection(side, max_message_size=None)
    for item in items:
        if isinstance(item, str):
            conn.send_text(item)
        else:
            conn.send_binary(item)
    return conn.data_to_send()


@each_impl
@settings(max_examples=150, deadline=None)
@given(items=messages, masked=st.booleans())
def test_parse_frames_returns_every_whole_message(
    impl: ModuleType, items: list[str | bytes], masked: bool
) -> None:
    """Whole frames come back as the messages that were sent, and pos lands at the end."""
    data = stream(items, Side.CLIENT if masked else Side.SERVER)
    got, pos = impl.parse_frames(data, 0, masked, -1)
    assert got == items
    assert pos == len(data)


@each_impl
@settings(max_examples=150, deadline=None)
@given(items=messages, cut=st.integers(min_value=0, max_value=4000), limit=st.integers(-1, 400))
def test_parse_frames_stops_at_incomplete_or_too_long(
    impl: ModuleType, items: list[str | bytes], cut: int, limit: int
) -> None:
    """A cut stream or a limit stops parsing at a frame boundary, the same in both paths."""
    data = stream(items, Side.CLIENT)[:cut]
    got = impl.parse_frames(data, 0, True, limit)
    assert got == PY.parse_frames(data, 0, True, limit)
    assert items[: len(got[0])] == got[0]


@each_impl
def test_parse_frames_leaves_bad_frames_to_the_caller(impl: ModuleType) -> None:
    """Invalid UTF-8, control, fragmented, RSV and wrong-mask frames are not consumed."""
    good = stream(["ok"], Side.CLIENT)
    for bad in (
        b"\x81\x02\xff\xfe",  # invalid UTF-8 (unmasked: wrong mask bit too)
        b"\x81\x82\x00\x00\x00\x00\xff\xfe",  # invalid UTF-8, masked
        b"\x89\x80\x00\x00\x00\x00",  # ping
        b"\x01\x80\x00\x00\x00\x00",  # FIN clear
        b"\xc1\x80\x00\x00\x00\x00",  # RSV1
    ):
        assert impl.parse_frames(good + bad, 0, True, -1) == (["ok"], len(good))


@each_impl
@settings(max_examples=100, deadline=None)
@given(
    payload=st.one_of(st.text(max_size=2000).map(str.encode), st.binary(max_size=2000)),
    text=st.booleans(),
    mask=st.binary(min_size=4, max_size=4),
    cuts=st.lists(st.integers(0, 2000), max_size=6),
)
def test_assembler_matches_one_shot_unmask(
    impl: ModuleType, payload: bytes, text: bool, mask: bytes, cuts: list[int]
) -> None:
    """Feeding masked pieces gives the unmasked message; invalid UTF-8 is reported."""
    masked = PY.apply_mask(payload, mask)
    asm = impl.Assembler(len(payload), text)
    ok = True
    bounds = sorted({0, len(payload), *(c for c in cuts if c <= len(payload))})
    for a, b in zip(bounds, bounds[1:], strict=False):
        ok = asm.feed(masked[a:b], mask, a) and ok
    if not text:
        assert asm.finish() == payload
        return
    try:
        expected: str | None = payload.decode()
    except UnicodeDecodeError:
        expected = None
    if ok:
        assert asm.finish() == expected
    else:
        assert expected is None


@each_impl
def test_assembler_fails_fast_and_checks_sizes(impl: ModuleType) -> None:
    """A surrogate prefix fails at once; overfeeding and early finish raise ValueError."""
    asm = impl.Assembler(10, True)
    assert asm.feed(b"abc", None, 0)
    assert not asm.feed(b"\xed\xa0", None, 0)
    asm = impl.Assembler(2, False)
    with pytest.raises(ValueError):
        asm.feed(b"abc", None, 0)
    with pytest.raises(ValueError):
        asm.finish()
    asm = impl.Assembler(2, True)
    assert asm.feed(b"\xc3", None, 0)
    assert asm.feed(b"a", None, 0) is False
    asm = impl.Assembler(1, True)
    assert asm.feed(b"\xc3", None, 0)
    assert asm.finish() is None


@each_impl
@settings(max_examples=100, deadline=None)
@given(
    data=st.binary(max_size=500),
    mask=st.binary(min_size=4, max_size=4),
    offset=st.integers(0, 7),
    at=st.integers(0, 50),
)
def test_unmask_into_equals_apply_mask(
    impl: ModuleType, data: bytes, mask: bytes, offset: int, at: int
) -> None:
    """unmask_into writes apply_mask's result at the offset and returns the UTF-8 state."""
    dest = bytearray(at + len(data))
    state = impl.unmask_into(dest, at, data, mask, offset, 0)
    unmasked = PY.apply_mask(data, mask, offset)
    assert bytes(dest[at:]) == unmasked
    assert state == PY.utf8_check(unmasked, 0)
    with pytest.raises(ValueError):
        impl.unmask_into(bytearray(len(data) - 1) if data else bytearray(), 1, data + b"x", None, 0)
