"""Close codes (RFC 6455 section 7.4) and the close frame payload (section 5.5.1)."""

from __future__ import annotations

import dataclasses
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidewire.errors import ProtocolError
from tidewire.protocol.close import (
    MAX_REASON_BYTES,
    Close,
    CloseAction,
    CloseCode,
    action_for,
    is_valid_received_code,
)
from tidewire.protocol.connection import is_sendable_code

VALID_CODES = [1000, 1001, 1002, 1003, *range(1007, 1015), 3000, 3001, 3999, 4000, 4001, 4999]
INVALID_CODES = [0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1999, 2000, 2999, 5000, 65535]


def payload(code: int, reason: bytes = b"") -> bytes:
    """A close frame payload: 16-bit code then the reason bytes."""
    return struct.pack("!H", code) + reason


# ----------------------------------------------------------------------------- codes


@pytest.mark.parametrize("code", VALID_CODES)
def test_valid_received_codes(code: int) -> None:
    """1000-1003, 1007-1014 and 3000-4999 may appear in a received close frame."""
    assert is_valid_received_code(code)
    assert Close.parse(payload(code)) == Close(code, "")


@pytest.mark.parametrize("code", INVALID_CODES)
def test_invalid_received_codes(code: int) -> None:
    """Codes outside the allowed ranges are a protocol error (1002)."""
    assert not is_valid_received_code(code)
    with pytest.raises(ProtocolError) as info:
        Close.parse(payload(code, b"why"))
    assert info.value.close_code == 1002
    assert str(code) in str(info.value)


@pytest.mark.parametrize("code", VALID_CODES)
def test_sendable_codes_match_valid_codes(code: int) -> None:
    """Every code valid to receive is valid to send."""
    assert is_sendable_code(code)


@pytest.mark.parametrize("code", INVALID_CODES)
def test_unsendable_codes(code: int) -> None:
    """1004-1006, 1015 and out-of-range codes may not be sent."""
    assert not is_sendable_code(code)


@settings(max_examples=200, deadline=None)
@given(code=st.integers(0, 65535))
def test_valid_code_ranges_exhaustive(code: int) -> None:
    """is_valid_received_code is exactly the set of section 7.4.1/7.4.2."""
    expected = code in (1000, 1001, 1002, 1003) or 1007 <= code <= 1014 or 3000 <= code <= 4999
    assert is_valid_received_code(code) is expected
    assert is_sendable_code(code) is expected


def test_close_code_enum_values() -> None:
    """The registered codes have their RFC 6455 section 7.4.1 values."""
    assert int(CloseCode.NORMAL_CLOSURE) == 1000
    assert int(CloseCode.GOING_AWAY) == 1001
    assert int(CloseCode.PROTOCOL_ERROR) == 1002
    assert int(CloseCode.UNSUPPORTED_DATA) == 1003
    assert int(CloseCode.NO_STATUS_RCVD) == 1005
    assert int(CloseCode.ABNORMAL_CLOSURE) == 1006
    assert int(CloseCode.INVALID_PAYLOAD) == 1007
    assert int(CloseCode.POLICY_VIOLATION) == 1008
    assert int(CloseCode.MESSAGE_TOO_BIG) == 1009
    assert int(CloseCode.MANDATORY_EXTENSION) == 1010
    assert int(CloseCode.INTERNAL_ERROR) == 1011
    assert int(CloseCode.TLS_HANDSHAKE) == 1015


def test_tidewire_codes_are_private_use() -> None:
    """tidewire's own codes live in the private-use range 4000-4999 (section 7.4.2)."""
    for code in CloseCode:
        if code >= 4000:
            assert 4000 <= code <= 4999
            assert is_valid_received_code(code)


@pytest.mark.parametrize(
    ("code", "action"),
    [
        (1000, CloseAction.STOP),
        (1001, CloseAction.RECONNECT),
        (1006, CloseAction.BACKOFF),
        (1008, CloseAction.STOP),
        (1011, CloseAction.BACKOFF),
        (1012, CloseAction.RECONNECT),
        (1013, CloseAction.BACKOFF),
        (CloseCode.RECONNECT, CloseAction.RECONNECT),
        (CloseCode.SLOW_CONSUMER, CloseAction.RECONNECT),
        (CloseCode.TRY_LATER, CloseAction.BACKOFF),
        (CloseCode.IDLE, CloseAction.BACKOFF),
        (CloseCode.TOKEN_EXPIRED, CloseAction.REAUTH),
        (CloseCode.AUTH_TIMEOUT, CloseAction.REAUTH),
        (CloseCode.FORBIDDEN, CloseAction.STOP),
        (4999, CloseAction.STOP),
        (4300, CloseAction.BACKOFF),
        (3000, CloseAction.BACKOFF),
    ],
)
def test_close_taxonomy(code: int, action: CloseAction) -> None:
    """Each close code maps to the action a client takes (docs/protocol.md)."""
    assert action_for(code) is action


# ----------------------------------------------------------------------------- parse


def test_empty_payload_means_1005() -> None:
    """An empty close payload is "no status code" (section 7.1.5)."""
    assert Close.parse(b"") == Close(1005, "")


def test_one_byte_payload_is_protocol_error() -> None:
    """A 1-byte close payload cannot hold a code: protocol error 1002."""
    with pytest.raises(ProtocolError) as info:
        Close.parse(b"\x03")
    assert info.value.close_code == 1002


def test_parse_reason() -> None:
    """The reason is the UTF-8 text after the code."""
    assert Close.parse(payload(1001, "au revoir, élan".encode())) == Close(1001, "au revoir, élan")


@pytest.mark.parametrize(
    "reason",
    [b"\xff", b"ok\xc3", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"a\x80b"],
    ids=["ff", "truncated", "overlong", "surrogate", "above-max", "lone-continuation"],
)
def test_invalid_utf8_reason_is_1007(reason: bytes) -> None:
    """A reason that is not valid UTF-8 fails with 1007 (section 8.1)."""
    with pytest.raises(ProtocolError) as info:
        Close.parse(payload(1000, reason))
    assert info.value.close_code == 1007


def test_invalid_code_checked_before_reason() -> None:
    """A bad code and a bad reason together report the code (1002)."""
    with pytest.raises(ProtocolError) as info:
        Close.parse(payload(1005, b"\xff"))
    assert info.value.close_code == 1002


# ----------------------------------------------------------------------------- serialize


def test_serialize() -> None:
    """A close payload is the big-endian code followed by the UTF-8 reason."""
    assert Close(1000, "").serialize() == b"\x03\xe8"
    assert Close(4001, "né").serialize() == b"\x0f\xa1n\xc3\xa9"


def test_serialize_1005_is_empty() -> None:
    """1005 is never on the wire: it serializes to an empty payload."""
    assert Close(CloseCode.NO_STATUS_RCVD).serialize() == b""
    assert Close.parse(Close(1005).serialize()) == Close(1005, "")


@settings(max_examples=200, deadline=None)
@given(
    code=st.sampled_from(VALID_CODES) | st.integers(3000, 4999),
    reason=st.text(max_size=40).filter(lambda r: len(r.encode()) <= MAX_REASON_BYTES),
)
def test_serialize_parse_round_trip(code: int, reason: str) -> None:
    """parse(serialize(close)) gives back the same close, and it fits a control frame."""
    close = Close(code, reason)
    data = close.serialize()
    assert len(data) <= 125
    assert Close.parse(data) == close


def test_close_is_frozen() -> None:
    """Close is an immutable value."""
    close = Close(1000, "bye")
    with pytest.raises(dataclasses.FrozenInstanceError):
        close.code = 1001  # type: ignore[misc]


# ----------------------------------------------------------------------------- truncate_reason


def test_max_reason_bytes() -> None:
    """125 bytes of control payload minus the 2-byte code leave 123 for the reason."""
    assert MAX_REASON_BYTES == 123


@pytest.mark.parametrize("reason", ["", "short", "x" * 123, "é" * 61 + "x"])
def test_truncate_reason_keeps_fitting_reasons(reason: str) -> None:
    """A reason of at most 123 UTF-8 bytes is returned unchanged."""
    assert Close.truncate_reason(reason) == reason


def test_truncate_reason_ascii() -> None:
    """A long ASCII reason is cut to exactly 123 bytes, ending in an ellipsis."""
    out = Close.truncate_reason("x" * 124)
    assert len(out.encode()) == 123
    assert out == "x" * 120 + "..."


@pytest.mark.parametrize("char", ["é", "€", "😀"], ids=["2-byte", "3-byte", "4-byte"])
def test_truncate_reason_at_utf8_boundary(char: str) -> None:
    """A cut never splits a multi-byte character."""
    reason = char * 100
    out = Close.truncate_reason(reason)
    data = out.encode("utf-8")
    assert len(data) <= 123
    assert out.endswith("...")
    body = out[:-3]
    assert set(body) == {char}
    # As many whole characters as fit in the 120 bytes before the ellipsis.
    assert len(body) == 120 // len(char.encode())


@settings(max_examples=300, deadline=None)
@given(reason=st.text(max_size=200))
def test_truncate_reason_property(reason: str) -> None:
    """The result always fits in 123 bytes and keeps a prefix of the reason."""
    out = Close.truncate_reason(reason)
    assert len(out.encode()) <= MAX_REASON_BYTES
    if len(reason.encode()) <= MAX_REASON_BYTES:
        assert out == reason
    else:
        assert out.endswith("...")
        assert reason.startswith(out[:-3])
        # A sendable close with that reason fits a control frame.
        assert len(Close(1000, out).serialize()) <= 125
