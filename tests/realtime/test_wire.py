"""Wire protocol v1 envelopes: decode, validate, encode (docs/protocol.md)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidewire.realtime.wire import (
    CLIENT_TYPES,
    MAX_NAME_LENGTH,
    SERVER_TYPES,
    WireError,
    check_name,
    decode,
    encode,
    error_envelope,
    ref_of,
)


def code_of(data: str | bytes) -> str:
    """The error code decode() raises for ``data``."""
    with pytest.raises(WireError) as info:
        decode(data)
    return info.value.code


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b'{"type":"ping"}', "bad_json"),
        ("{", "bad_json"),
        ('{"type":"x","n":NaN}', "bad_json"),
        ('{"type":"x","n":Infinity}', "bad_json"),
        ("[" * 100_000 + "]" * 100_000, "bad_json"),
        ("[]", "bad_envelope"),
        ('"ping"', "bad_envelope"),
        ("null", "bad_envelope"),
        ("{}", "bad_envelope"),
        ('{"type":1}', "bad_envelope"),
        ('{"type":""}', "bad_envelope"),
        ('{"type":"joined","room":"r"}', "bad_envelope"),
        ('{"type":"x","id":true}', "bad_envelope"),
        ('{"type":"x","id":1.5}', "bad_envelope"),
        ('{"type":"x","id":""}', "bad_envelope"),
        ('{"type":"x","id":"' + "i" * 65 + '"}', "bad_envelope"),
        ('{"type":"join"}', "invalid"),
        ('{"type":"join","room":""}', "invalid"),
        ('{"type":"join","room":"a b"}', "invalid"),
        ('{"type":"join","room":7}', "invalid"),
        ('{"type":"leave","room":"<script>"}', "invalid"),
        ('{"type":"subscribe","channel":"c","since":3}', "invalid"),
        ('{"type":"subscribe","channel":"c","since":{"epoch":"e","offset":-1}}', "invalid"),
        ('{"type":"subscribe","channel":"c","since":{"epoch":1,"offset":1}}', "invalid"),
        ('{"type":"publish","channel":"c"}', "invalid"),
        ('{"type":"auth"}', "invalid"),
        ('{"type":"auth","token":""}', "invalid"),
        ('{"type":"rpc","method":"m"}', "invalid"),
        ('{"type":"rpc","id":1}', "invalid"),
        ('{"type":"rpc","id":1,"method":""}', "invalid"),
        ('{"type":"rpc_result","id":1}', "invalid"),
        ('{"type":"rpc_result","id":1,"result":1,"error":{"code":"a","message":"b"}}', "invalid"),
        ('{"type":"rpc_result","id":1,"error":"boom"}', "invalid"),
    ],
)
def test_bad_input_gets_the_documented_code(data: str | bytes, code: str) -> None:
    """Each kind of bad input maps to one documented error code."""
    assert code_of(data) == code


@pytest.mark.parametrize(
    "envelope",
    [
        {"type": "ping"},
        {"type": "chat", "text": "hé", "id": 7},
        {"type": "join", "room": "lobby", "id": "j1"},
        {"type": "subscribe", "channel": "news:eu", "since": {"epoch": "ab", "offset": 0}},
        {"type": "publish", "channel": "c", "payload": None},
        {"type": "rpc", "id": 1, "method": "rooms.list"},
        {"type": "rpc_result", "id": 3, "result": None},
        {"type": "rpc_result", "id": 3, "error": {"code": "x", "message": "y"}},
        {"type": "auth", "token": "t"},
    ],
)
def test_valid_envelopes_decode_unchanged(envelope: dict[str, Any]) -> None:
    """A valid envelope decodes to the same object it was encoded from."""
    assert decode(encode(envelope)) == envelope


def test_errors_refer_to_the_message_id_or_type() -> None:
    """``ref`` is the message id when it has one, else its type."""
    with pytest.raises(WireError) as info:
        decode('{"type":"join","room":"","id":"j9"}')
    assert info.value.ref == "j9"
    with pytest.raises(WireError) as info:
        decode('{"type":"join","room":""}')
    assert info.value.ref == "join"
    assert ref_of({"type": "x"}) == "x"


def test_names() -> None:
    """Names are 1-255 characters from a conservative set."""
    assert check_name("room-1_a.b:c@d/e#f=g+h", "room") == "room-1_a.b:c@d/e#f=g+h"
    assert check_name("r" * MAX_NAME_LENGTH, "room")
    for bad in ("", "r" * (MAX_NAME_LENGTH + 1), "a b", "é", "a\nb", None, 3):
        with pytest.raises(WireError):
            check_name(bad, "room")


def test_encode_is_compact_keeps_unicode_and_refuses_nan() -> None:
    """encode() writes compact JSON, keeps non-ASCII text and refuses NaN."""
    assert encode({"type": "x", "t": "é"}) == '{"type":"x","t":"é"}'
    with pytest.raises(ValueError):
        encode({"type": "x", "n": float("nan")})


def test_error_envelope_shape() -> None:
    """error_envelope() builds the documented error message, ref optional."""
    assert error_envelope("c", "m") == {"type": "error", "code": "c", "message": "m"}
    assert error_envelope("c", "m", 4)["ref"] == 4


def test_reserved_type_sets() -> None:
    """The reserved types of both directions are the documented ones."""
    assert {"auth", "join", "leave", "subscribe", "publish", "rpc", "ping"} <= CLIENT_TYPES
    assert {"connection", "joined", "userJoined", "userLeft", "error", "pong"} <= SERVER_TYPES


@given(st.text(max_size=200) | st.binary(max_size=200))
def test_decode_raises_only_wire_errors(data: str | bytes) -> None:
    """Arbitrary input either decodes to an envelope or raises WireError, nothing else."""
    try:
        envelope = decode(data)
    except WireError as exc:
        assert exc.code in {"bad_json", "bad_envelope", "invalid"}
    else:
        assert isinstance(envelope["type"], str)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)


@given(
    st.dictionaries(st.text(max_size=8), _json, max_size=5),
    st.sampled_from(sorted(CLIENT_TYPES) + ["app"]),
)
def test_decode_raises_only_wire_errors_on_json_objects(fields: dict[str, Any], kind: str) -> None:
    """Arbitrary JSON objects with a reserved or app type never escape with another error."""
    try:
        envelope = decode(json.dumps({**fields, "type": kind}))
    except WireError:
        return
    assert envelope["type"] == kind
