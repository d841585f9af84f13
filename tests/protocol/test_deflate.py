"""Tests for permessage-deflate (RFC 7692): negotiation, inflate, deflate."""

from __future__ import annotations

import contextlib
import os
import random
import tracemalloc
import zlib
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidewire.errors import HandshakeError, PayloadTooBig, ProtocolError
from tidewire.protocol import deflate as deflate_module
from tidewire.protocol.deflate import (
    ADAPTIVE_MIN_SIZE,
    DEFAULT_COMPRESS_LEVEL,
    DEFAULT_MEM_LEVEL,
    DEFAULT_MIN_SIZE,
    DOUBT_EXIT,
    FAST_COMPRESS_LEVEL,
    FAST_LEVEL_MIN_SIZE,
    FAST_LEVEL_MIN_WINDOW_BITS,
    ClientDeflateFactory,
    DeflateParams,
    PerMessageDeflate,
    ServerDeflateFactory,
    parse_params,
)

Params = list[tuple[str, str | None]]

SNCT = "server_no_context_takeover"
CNCT = "client_no_context_takeover"
SMWB = "server_max_window_bits"
CMWB = "client_max_window_bits"
MiB = 1 << 20


def pair(**negotiated: object) -> tuple[PerMessageDeflate, PerMessageDeflate]:
    """Build a server and a client extension sharing the same negotiated values."""
    server = PerMessageDeflate(is_server_side=True, **negotiated)  # type: ignore[arg-type]
    client = PerMessageDeflate(is_server_side=False, **negotiated)  # type: ignore[arg-type]
    return server, client


def inflate_all(ext: PerMessageDeflate, payload: bytes, max_size: int | None = None) -> bytes:
    """Inflate one whole message in one call."""
    return ext.inflate(payload, fin=True, max_size=max_size)


# --- RFC 7692 section 7.2.3 samples -------------------------------------------------

HELLO = bytes.fromhex("f248cdc9c90700")


def test_rfc_7_2_3_1_hello_compresses_to_sample() -> None:
    """Compressing "Hello" gives the payload of RFC 7692 section 7.2.3.1."""
    server, _ = pair()
    assert server.deflate(b"Hello") == HELLO


def test_rfc_7_2_3_1_sample_inflates() -> None:
    """The 7.2.3.1 single-frame payload inflates to "Hello"."""
    _, client = pair()
    assert inflate_all(client, HELLO) == b"Hello"


def test_rfc_7_2_3_1_fragmented_sample_inflates() -> None:
    """The 7.2.3.1 fragmented payload (f2 48 cd | c9 c9 07 00) inflates to "Hello"."""
    _, client = pair()
    first = client.inflate(bytes.fromhex("f248cd"), fin=False, max_size=None)
    rest = client.inflate(bytes.fromhex("c9c90700"), fin=True, max_size=None, already=len(first))
    assert first + rest == b"Hello"


def test_rfc_7_2_3_2_context_takeover_sample() -> None:
    """With context takeover a second "Hello" compresses to f2 00 11 00 00 (7.2.3.2)."""
    server, client = pair()
    second = bytes.fromhex("f200110000")
    assert server.deflate(b"Hello") == HELLO
    assert server.deflate(b"Hello") == second
    assert inflate_all(client, HELLO) == b"Hello"
    assert inflate_all(client, second) == b"Hello"


def test_no_context_takeover_repeats_first_sample() -> None:
    """With server_no_context_takeover every "Hello" compresses to the 7.2.3.1 bytes."""
    server, client = pair(server_no_context_takeover=True)
    for _ in range(3):
        assert server.deflate(b"Hello") == HELLO
        assert inflate_all(client, HELLO) == b"Hello"


def test_rfc_7_2_3_3_stored_block_sample() -> None:
    """A DEFLATE block with no compression (7.2.3.3) inflates to "Hello"."""
    _, client = pair()
    assert inflate_all(client, bytes.fromhex("000500faff48656c6c6f00")) == b"Hello"


def test_rfc_7_2_3_4_bfinal_sample() -> None:
    """A block with BFINAL set (7.2.3.4) inflates, and the next message starts afresh."""
    _, client = pair()
    assert inflate_all(client, bytes.fromhex("f348cdc9c9070000")) == b"Hello"
    assert inflate_all(client, HELLO) == b"Hello"


def test_rfc_7_2_3_5_two_blocks_sample() -> None:
    """Two DEFLATE blocks in one message (7.2.3.5) inflate to "Hello"."""
    _, client = pair()
    payload = bytes.fromhex("f24805000000ffffcac9c90700")
    assert inflate_all(client, payload) == b"Hello"


def test_rfc_7_2_3_6_empty_block_inflates_to_nothing() -> None:
    """A payload of a single 00 byte (7.2.3.6) inflates to an empty message."""
    _, client = pair()
    assert inflate_all(client, b"\x00") == b""
    assert inflate_all(client, HELLO) == b"Hello"


def test_empty_message_deflates_to_single_zero() -> None:
    """An empty message compresses to 00, fresh or after other messages (7.2.3.6)."""
    server, client = pair()
    assert server.deflate(b"") == b"\x00"
    assert server.deflate(b"Hello") == HELLO
    assert server.deflate(b"") == b"\x00"
    for payload, expected in ((b"\x00", b""), (HELLO, b"Hello"), (b"\x00", b"")):
        assert inflate_all(client, payload) == expected


def test_fragments_keep_sync_flush_tail_until_fin() -> None:
    """Non-final fragments end with 00 00 ff ff; the final one does not (7.2.1)."""
    server, client = pair()
    first = server.deflate(b"Hel", fin=False)
    last = server.deflate(b"lo", fin=True)
    assert first.endswith(b"\x00\x00\xff\xff")
    assert not last.endswith(b"\x00\x00\xff\xff")
    assert client.inflate(first, fin=False, max_size=None) == b"Hel"
    assert client.inflate(last, fin=True, max_size=None, already=3) == b"lo"


def test_empty_final_fragment() -> None:
    """An empty final fragment after a flushed one still yields a valid payload."""
    server, client = pair()
    first = server.deflate(b"Hello", fin=False)
    last = server.deflate(b"", fin=True)
    assert last
    assert client.inflate(first, fin=False, max_size=None) == b"Hello"
    assert client.inflate(last, fin=True, max_size=None, already=5) == b""


# --- parameter parsing ---------------------------------------------------------------

VALID_PARAMS: list[tuple[Params, bool, DeflateParams]] = [
    ([], True, DeflateParams()),
    ([], False, DeflateParams()),
    ([(SNCT, None)], True, DeflateParams(server_no_context_takeover=True)),
    ([(CNCT, None)], False, DeflateParams(client_no_context_takeover=True)),
    ([(SMWB, "8")], True, DeflateParams(server_max_window_bits=8)),
    ([(SMWB, "15")], False, DeflateParams(server_max_window_bits=15)),
    ([(CMWB, None)], True, DeflateParams(client_max_window_bits=15)),
    ([(CMWB, "10")], True, DeflateParams(client_max_window_bits=10)),
    ([(CMWB, "9")], False, DeflateParams(client_max_window_bits=9)),
    (
        [(SNCT, None), (CNCT, None), (SMWB, "12"), (CMWB, "11")],
        True,
        DeflateParams(True, True, 12, 11),
    ),
    (
        [(CMWB, "11"), (SMWB, "12"), (CNCT, None), (SNCT, None)],
        False,
        DeflateParams(True, True, 12, 11),
    ),
]


@pytest.mark.parametrize(("params", "is_server_side", "expected"), VALID_PARAMS)
def test_parse_params_valid(params: Params, is_server_side: bool, expected: DeflateParams) -> None:
    """Valid offers and responses parse to the expected values."""
    assert parse_params(params, is_server_side=is_server_side) == expected


INVALID_PARAMS: list[tuple[Params, str]] = [
    ([(SMWB, "7")], SMWB),
    ([(SMWB, "16")], SMWB),
    ([(SMWB, "08")], SMWB),
    ([(SMWB, "+9")], SMWB),
    ([(SMWB, " 9")], SMWB),
    ([(SMWB, "٩")], SMWB),  # an Arabic-Indic nine: a Unicode digit, not ABNF DIGIT
    ([(SMWB, "")], SMWB),
    ([(SMWB, None)], SMWB),
    ([(CMWB, "7")], CMWB),
    ([(CMWB, "16")], CMWB),
    ([(CMWB, "010")], CMWB),
    ([(SNCT, "")], SNCT),
    ([(SNCT, "1")], SNCT),
    ([(CNCT, "true")], CNCT),
    ([(SNCT, None), (SNCT, None)], SNCT),
    ([(SMWB, "10"), (SMWB, "10")], SMWB),
    ([(CMWB, None), (CMWB, "10")], CMWB),
    ([("mux", None)], "mux"),
    ([("Server_No_Context_Takeover", None)], "Server_No_Context_Takeover"),
    ([(SNCT, None), ("x_max_window_bits", "10")], "x_max_window_bits"),
]


@pytest.mark.parametrize(("params", "name"), INVALID_PARAMS)
@pytest.mark.parametrize("is_server_side", [True, False])
def test_parse_params_invalid(params: Params, name: str, is_server_side: bool) -> None:
    """Invalid parameters raise HandshakeError naming the parameter (400 offer, 502 response)."""
    with pytest.raises(HandshakeError) as info:
        parse_params(params, is_server_side=is_server_side)
    assert name in str(info.value)
    assert info.value.status == (400 if is_server_side else 502)


def test_parse_params_response_requires_client_window_value() -> None:
    """A response may not carry client_max_window_bits without a value (7.1.2.2)."""
    with pytest.raises(HandshakeError, match=CMWB) as info:
        parse_params([(CMWB, None)], is_server_side=False)
    assert info.value.status == 502


# --- server negotiation --------------------------------------------------------------

# (factory kwargs, offers, expected response, expected (snct, cnct, smwb, cmwb))
SERVER_CASES: list[tuple[dict[str, object], list[Params], Params, tuple[bool, bool, int, int]]] = [
    ({}, [[]], [(SMWB, "12")], (False, False, 12, 15)),
    ({}, [[(CMWB, None)]], [(SMWB, "12"), (CMWB, "12")], (False, False, 12, 12)),
    ({}, [[(CMWB, "10")]], [(SMWB, "12"), (CMWB, "10")], (False, False, 12, 10)),
    ({}, [[(CMWB, "15")]], [(SMWB, "12"), (CMWB, "12")], (False, False, 12, 12)),
    ({}, [[(CMWB, "8")]], [(SMWB, "12"), (CMWB, "8")], (False, False, 12, 8)),
    ({}, [[(SMWB, "10")]], [(SMWB, "10")], (False, False, 10, 15)),
    ({}, [[(SMWB, "15")]], [(SMWB, "12")], (False, False, 12, 15)),
    ({}, [[(SMWB, "9")]], [(SMWB, "9")], (False, False, 9, 15)),
    ({}, [[(SNCT, None)]], [(SNCT, None), (SMWB, "12")], (True, False, 12, 15)),
    ({}, [[(CNCT, None)]], [(CNCT, None), (SMWB, "12")], (False, True, 12, 15)),
    (
        {"server_max_window_bits": None, "client_max_window_bits": None},
        [[]],
        [],
        (False, False, 15, 15),
    ),
    (
        {"server_max_window_bits": None, "client_max_window_bits": None},
        [[(CMWB, None)]],
        [],
        (False, False, 15, 15),
    ),
    (
        {"server_max_window_bits": None, "client_max_window_bits": None},
        [[(CMWB, "11"), (SMWB, "13")]],
        [(SMWB, "13"), (CMWB, "11")],
        (False, False, 13, 11),
    ),
    (
        {"server_no_context_takeover": True, "client_no_context_takeover": True},
        [[]],
        [(SNCT, None), (CNCT, None), (SMWB, "12")],
        (True, True, 12, 15),
    ),
    (
        {"server_max_window_bits": 15, "client_max_window_bits": 9},
        [[(CMWB, None)]],
        [(SMWB, "15"), (CMWB, "9")],
        (False, False, 15, 9),
    ),
    # An offer forcing an 8-bit server window is declined; the next one is taken.
    ({}, [[(SMWB, "8")], [(SMWB, "9")]], [(SMWB, "9")], (False, False, 9, 15)),
    # Invalid offers are declined; the next one is taken.
    ({}, [[(SMWB, "7")], [(SNCT, None)]], [(SNCT, None), (SMWB, "12")], (True, False, 12, 15)),
    ({}, [[(SMWB, "16")], []], [(SMWB, "12")], (False, False, 12, 15)),
    ({}, [[(SMWB, "08")], []], [(SMWB, "12")], (False, False, 12, 15)),
    ({}, [[(SNCT, None), (SNCT, None)], []], [(SMWB, "12")], (False, False, 12, 15)),
    ({}, [[("unknown", None)], []], [(SMWB, "12")], (False, False, 12, 15)),
    ({}, [[(CNCT, "1")], []], [(SMWB, "12")], (False, False, 12, 15)),
]


@pytest.mark.parametrize(("kwargs", "offers", "response", "negotiated"), SERVER_CASES)
def test_server_accepts(
    kwargs: dict[str, object],
    offers: list[Params],
    response: Params,
    negotiated: tuple[bool, bool, int, int],
) -> None:
    """The server answers the first acceptable offer as RFC 7692 section 7.1 requires."""
    factory = ServerDeflateFactory(**kwargs)  # type: ignore[arg-type]
    result = factory.accept(offers)
    assert result is not None
    params, ext = result
    assert params == response
    assert (
        ext.server_no_context_takeover,
        ext.client_no_context_takeover,
        ext.server_max_window_bits,
        ext.client_max_window_bits,
    ) == negotiated
    assert ext.is_server_side
    assert (ext.name, ext.rsv1, ext.rsv2, ext.rsv3) == ("permessage-deflate", True, False, False)


@pytest.mark.parametrize(
    "offers",
    [
        [],
        [[(SMWB, "8")]],
        [[(SMWB, "7")]],
        [[(CMWB, "16")]],
        [[(SMWB, "08")], [(SNCT, "x")], [("foo", None)]],
        [[(CMWB, None), (CMWB, None)]],
    ],
)
def test_server_declines(offers: list[Params]) -> None:
    """With no acceptable offer the server declines the extension."""
    assert ServerDeflateFactory().accept(offers) is None


def test_server_never_sends_unoffered_client_window() -> None:
    """client_max_window_bits is only answered when offered (RFC 7692 section 7.1.2.2)."""
    factory = ServerDeflateFactory(client_max_window_bits=9)
    result = factory.accept([[(SNCT, None)]])
    assert result is not None
    assert all(name != CMWB for name, _ in result[0])
    assert result[1].client_max_window_bits == 15


@pytest.mark.parametrize(
    "kwargs",
    [
        {"server_max_window_bits": 8},
        {"server_max_window_bits": 16},
        {"client_max_window_bits": 7},
        {"client_max_window_bits": True},
        {"compress_level": 10},
        {"mem_level": 0},
        {"min_size": -1},
    ],
)
def test_server_factory_rejects_bad_settings(kwargs: dict[str, object]) -> None:
    """Out-of-range server settings raise ValueError naming them."""
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ServerDeflateFactory(**kwargs)  # type: ignore[arg-type]


# --- client negotiation --------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "offer"),
    [
        ({}, [(CMWB, None)]),
        ({"client_max_window_bits": None}, []),
        ({"client_max_window_bits": False}, []),
        ({"client_max_window_bits": 10}, [(CMWB, "10")]),
        (
            {
                "server_no_context_takeover": True,
                "client_no_context_takeover": True,
                "server_max_window_bits": 8,
            },
            [(SNCT, None), (CNCT, None), (SMWB, "8"), (CMWB, None)],
        ),
    ],
)
def test_client_offer(kwargs: dict[str, object], offer: Params) -> None:
    """The client offers exactly the parameters it was configured with."""
    assert ClientDeflateFactory(**kwargs).offer() == offer  # type: ignore[arg-type]


# (factory kwargs, response, expected (snct, cnct, smwb, cmwb))
CLIENT_OK: list[tuple[dict[str, object], Params, tuple[bool, bool, int, int]]] = [
    ({}, [], (False, False, 15, 15)),
    ({}, [(SMWB, "10")], (False, False, 10, 15)),
    ({}, [(SMWB, "8")], (False, False, 8, 15)),
    ({}, [(CMWB, "10")], (False, False, 15, 10)),
    ({}, [(SNCT, None)], (True, False, 15, 15)),
    ({}, [(CNCT, None)], (False, True, 15, 15)),
    ({"client_max_window_bits": 11}, [], (False, False, 15, 11)),
    ({"client_max_window_bits": 11}, [(CMWB, "11")], (False, False, 15, 11)),
    ({"client_max_window_bits": 11}, [(CMWB, "9")], (False, False, 15, 9)),
    ({"client_no_context_takeover": True}, [], (False, True, 15, 15)),
    ({"server_no_context_takeover": True}, [(SNCT, None)], (True, False, 15, 15)),
    ({"server_max_window_bits": 12}, [(SMWB, "12")], (False, False, 12, 15)),
    ({"server_max_window_bits": 12}, [(SMWB, "9")], (False, False, 9, 15)),
    (
        {"client_max_window_bits": None},
        [(SNCT, None), (CNCT, None), (SMWB, "13")],
        (True, True, 13, 15),
    ),
]


@pytest.mark.parametrize(("kwargs", "response", "negotiated"), CLIENT_OK)
def test_client_accepts(
    kwargs: dict[str, object], response: Params, negotiated: tuple[bool, bool, int, int]
) -> None:
    """The client accepts every response RFC 7692 section 7.1 allows for its offer."""
    ext = ClientDeflateFactory(**kwargs).accept(response)  # type: ignore[arg-type]
    assert (
        ext.server_no_context_takeover,
        ext.client_no_context_takeover,
        ext.server_max_window_bits,
        ext.client_max_window_bits,
    ) == negotiated
    assert not ext.is_server_side


# (factory kwargs, response, name the error must mention)
CLIENT_BAD: list[tuple[dict[str, object], Params, str]] = [
    ({"client_max_window_bits": None}, [(CMWB, "10")], CMWB),
    ({"client_max_window_bits": 10}, [(CMWB, "11")], CMWB),
    ({}, [(CMWB, None)], CMWB),
    ({"server_max_window_bits": 10}, [(SMWB, "11")], SMWB),
    ({"server_max_window_bits": 10}, [], SMWB),
    ({"server_no_context_takeover": True}, [], SNCT),
    ({}, [(SMWB, "7")], SMWB),
    ({}, [(SMWB, "16")], SMWB),
    ({}, [(SMWB, "08")], SMWB),
    ({}, [(CMWB, "7")], CMWB),
    ({}, [(SNCT, "x")], SNCT),
    ({}, [(CNCT, "")], CNCT),
    ({}, [(SNCT, None), (SNCT, None)], SNCT),
    ({}, [("client_max_window", "10")], "client_max_window"),
]


@pytest.mark.parametrize(("kwargs", "response", "name"), CLIENT_BAD)
def test_client_rejects(kwargs: dict[str, object], response: Params, name: str) -> None:
    """An invalid response or one exceeding the offer fails with 502 naming the parameter."""
    factory = ClientDeflateFactory(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(HandshakeError) as info:
        factory.accept(response)
    assert info.value.status == 502
    assert name in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"client_max_window_bits": 8},
        {"client_max_window_bits": 16},
        {"server_max_window_bits": 7},
        {"compress_level": -1},
        {"mem_level": 10},
    ],
)
def test_client_factory_rejects_bad_settings(kwargs: dict[str, object]) -> None:
    """Out-of-range client settings, including an 8-bit own window, raise ValueError."""
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ClientDeflateFactory(**kwargs)  # type: ignore[arg-type]


def test_client_with_8_bit_window_sends_stored_blocks() -> None:
    """A client told client_max_window_bits=8 never compresses but stays valid (section 6)."""
    client = ClientDeflateFactory().accept([(CMWB, "8")])
    server = PerMessageDeflate(is_server_side=True, client_max_window_bits=8)
    assert not client.can_compress
    assert not client.should_compress(10_000)
    message = os.urandom(70_000) + b"a" * 1000
    payload = client.deflate(message)
    assert len(payload) > len(message)
    assert inflate_all(server, payload) == message
    assert inflate_all(server, client.deflate(b"")) == b""


@pytest.mark.parametrize(
    "client_kwargs",
    [
        {},
        {"client_max_window_bits": None},
        {"client_max_window_bits": 9},
        {"server_no_context_takeover": True, "client_no_context_takeover": True},
        {"server_max_window_bits": 10},
    ],
)
def test_negotiation_end_to_end(client_kwargs: dict[str, object]) -> None:
    """What the server answers to our client's offer is accepted and interoperates."""
    client_factory = ClientDeflateFactory(**client_kwargs)  # type: ignore[arg-type]
    result = ServerDeflateFactory().accept([client_factory.offer()])
    assert result is not None
    response, server = result
    client = client_factory.accept(response)
    for ext in (server, client):
        assert ext.server_max_window_bits == server.server_max_window_bits
        assert ext.client_max_window_bits == server.client_max_window_bits
    for i in range(3):
        message = b"message %d " % i * 20
        assert inflate_all(server, client.deflate(message)) == message
        assert inflate_all(client, server.deflate(message)) == message


# --- round trips ---------------------------------------------------------------------

messages_strategy = st.lists(
    st.one_of(
        st.binary(max_size=600),
        st.builds(
            lambda word, n: word * n,
            st.binary(min_size=1, max_size=12),
            st.integers(min_value=0, max_value=400),
        ),
    ),
    min_size=1,
    max_size=6,
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """Split data at the given positions (taken modulo its length, sorted)."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@settings(max_examples=150, deadline=None)
@given(
    server_nct=st.booleans(),
    client_nct=st.booleans(),
    server_bits=st.integers(min_value=8, max_value=15),
    client_bits=st.integers(min_value=8, max_value=15),
    messages=messages_strategy,
    directions=st.lists(st.booleans(), min_size=6, max_size=6),
    fragment_cuts=st.lists(st.lists(st.integers(min_value=0), max_size=4), min_size=6, max_size=6),
    chunk_cuts=st.lists(st.lists(st.integers(min_value=0), max_size=6), min_size=6, max_size=6),
)
def test_round_trip(
    server_nct: bool,
    client_nct: bool,
    server_bits: int,
    client_bits: int,
    messages: list[bytes],
    directions: list[bool],
    fragment_cuts: list[list[int]],
    chunk_cuts: list[list[int]],
) -> None:
    """Messages split into fragments and fed in random chunks round-trip in both directions."""
    server, client = pair(
        server_no_context_takeover=server_nct,
        client_no_context_takeover=client_nct,
        server_max_window_bits=server_bits,
        client_max_window_bits=client_bits,
    )
    for i, message in enumerate(messages):
        sender, receiver = (server, client) if directions[i] else (client, server)
        fragments = split(message, fragment_cuts[i])
        payload = b"".join(
            sender.deflate(fragment, fin=j == len(fragments) - 1)
            for j, fragment in enumerate(fragments)
        )
        chunks = split(payload, chunk_cuts[i])
        out = b""
        for j, chunk in enumerate(chunks):
            out += receiver.inflate(
                chunk, fin=j == len(chunks) - 1, max_size=len(message), already=len(out)
            )
        assert out == message


@settings(max_examples=100, deadline=None)
@given(
    no_context_takeover=st.booleans(),
    bits=st.integers(min_value=8, max_value=15),
    messages=messages_strategy,
)
def test_interoperates_with_plain_zlib(
    no_context_takeover: bool, bits: int, messages: list[bytes]
) -> None:
    """Our payloads inflate with plain zlib and plain zlib's inflate with ours (7.2.1, 7.2.2)."""
    ours, _ = pair(server_no_context_takeover=no_context_takeover, server_max_window_bits=bits)
    receiver = PerMessageDeflate(
        is_server_side=True,
        client_no_context_takeover=no_context_takeover,
        client_max_window_bits=bits,
    )
    zlib_bits = max(bits, 9)  # zlib's own compressor is upgraded to 9 anyway
    inflater = zlib.decompressobj(-bits)
    deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib_bits)
    for message in messages:
        if no_context_takeover:
            inflater = zlib.decompressobj(-bits)
            deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib_bits)
        assert inflater.decompress(ours.deflate(message) + b"\x00\x00\xff\xff") == message
        payload = deflater.compress(message) + deflater.flush(zlib.Z_SYNC_FLUSH)
        assert payload.endswith(b"\x00\x00\xff\xff")
        assert inflate_all(receiver, payload[:-4]) == message


@settings(max_examples=60, deadline=None)
@given(
    client_kwargs=st.fixed_dictionaries(
        {
            "server_no_context_takeover": st.booleans(),
            "client_no_context_takeover": st.booleans(),
            "server_max_window_bits": st.none() | st.integers(min_value=8, max_value=15),
            "client_max_window_bits": st.none()
            | st.just(True)
            | st.integers(min_value=9, max_value=15),
        }
    ),
    server_kwargs=st.fixed_dictionaries(
        {
            "server_no_context_takeover": st.booleans(),
            "client_no_context_takeover": st.booleans(),
            "server_max_window_bits": st.none() | st.integers(min_value=9, max_value=15),
            "client_max_window_bits": st.none() | st.integers(min_value=8, max_value=15),
        }
    ),
    messages=messages_strategy,
)
def test_negotiated_round_trip(
    client_kwargs: dict[str, object], server_kwargs: dict[str, object], messages: list[bytes]
) -> None:
    """Any negotiation both factories agree on yields extensions that interoperate."""
    client_factory = ClientDeflateFactory(**client_kwargs)  # type: ignore[arg-type]
    server_factory = ServerDeflateFactory(**server_kwargs)  # type: ignore[arg-type]
    result = server_factory.accept([client_factory.offer()])
    if result is None:
        assert client_kwargs["server_max_window_bits"] == 8
        return
    response, server = result
    client = client_factory.accept(response)
    assert client.server_max_window_bits == server.server_max_window_bits
    assert client.client_max_window_bits == server.client_max_window_bits
    assert client.server_no_context_takeover == server.server_no_context_takeover
    assert client.client_no_context_takeover == server.client_no_context_takeover
    for message in messages:
        assert inflate_all(server, client.deflate(message)) == message
        assert inflate_all(client, server.deflate(message)) == message


# --- limits and hostile input --------------------------------------------------------


def bomb(size: int = 10 * MiB) -> bytes:
    """A payload of a few KiB that inflates to ``size`` zero bytes (zlib level 9)."""
    # Not our deflate: it sends large messages at FAST_COMPRESS_LEVEL, which
    # packs zeros about 4 times less tightly (46 KB for 10 MiB).
    sender = zlib.compressobj(9, zlib.DEFLATED, -15)
    return (sender.compress(bytes(size)) + sender.flush(zlib.Z_SYNC_FLUSH))[:-4]


def test_bomb_stopped_at_limit() -> None:
    """10 MiB of zeros with max_size=1 MiB raise PayloadTooBig before inflating much more."""
    payload = bomb()
    assert len(payload) < 32 * 1024
    server = PerMessageDeflate(is_server_side=True)
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooBig) as info:
            server.inflate(payload, fin=True, max_size=MiB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.what == "message"
    assert info.value.limit == MiB
    assert info.value.size == MiB + 1
    assert info.value.close_code == 1009
    # CPython collects the output in blocks and then joins them: about twice the
    # output at peak, never anywhere near the 10 MiB the bomb holds.
    assert peak < 3 * MiB


def test_bomb_in_chunks_stopped_at_limit() -> None:
    """Fed in 1 KiB chunks, a bomb never yields more than max_size bytes in total."""
    payload = bomb()
    server = PerMessageDeflate(is_server_side=True)
    produced = 0
    with pytest.raises(PayloadTooBig) as info:
        for start in range(0, len(payload), 1024):
            chunk = payload[start : start + 1024]
            fin = start + 1024 >= len(payload)
            produced += len(server.inflate(chunk, fin=fin, max_size=MiB, already=produced))
    assert produced <= MiB
    assert MiB < info.value.size <= MiB + 1


def test_message_exactly_at_limit_passes() -> None:
    """A message inflating to exactly max_size bytes is accepted."""
    _, client = pair()
    server = PerMessageDeflate(is_server_side=True)
    data = b"x" * 5000
    assert inflate_all(server, client.deflate(data), max_size=5000) == data
    with pytest.raises(PayloadTooBig):
        inflate_all(server, client.deflate(data), max_size=4999)


def test_already_counts_towards_limit() -> None:
    """Bytes reported in ``already`` count towards max_size."""
    server, client = pair()
    payload = client.deflate(b"y" * 100)
    with pytest.raises(PayloadTooBig) as info:
        server.inflate(payload, fin=True, max_size=150, already=60)
    assert info.value.size == 151


def test_invalid_data_is_protocol_error_1007() -> None:
    """Data that is not DEFLATE fails with ProtocolError and close code 1007."""
    server = PerMessageDeflate(is_server_side=True)
    with pytest.raises(ProtocolError) as info:
        server.inflate(b"\xff\xff\xff\xff", fin=True, max_size=None)
    assert info.value.close_code == 1007
    assert not isinstance(info.value, PayloadTooBig)


def test_reference_beyond_window_is_protocol_error() -> None:
    """A back-reference farther back than the negotiated window fails with 1007 (7.1.2)."""
    sender = zlib.compressobj(6, zlib.DEFLATED, -15)
    block = os.urandom(2000)
    first = sender.compress(block) + sender.flush(zlib.Z_SYNC_FLUSH)
    second = sender.compress(b"z" * 1000 + block) + sender.flush(zlib.Z_SYNC_FLUSH)
    receiver = PerMessageDeflate(is_server_side=True, client_max_window_bits=9)
    assert inflate_all(receiver, first[:-4]) == block
    with pytest.raises(ProtocolError) as info:
        inflate_all(receiver, second[:-4])
    assert info.value.close_code == 1007


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(st.binary(max_size=200), min_size=1, max_size=5),
    max_size=st.none() | st.integers(min_value=0, max_value=2000),
    bits=st.integers(min_value=8, max_value=15),
)
def test_random_bytes_raise_only_protocol_errors(
    chunks: list[bytes], max_size: int | None, bits: int
) -> None:
    """Random bytes fed to inflate return bytes or raise ProtocolError / PayloadTooBig."""
    server = PerMessageDeflate(is_server_side=True, client_max_window_bits=bits)
    produced = 0
    try:
        for i, chunk in enumerate(chunks):
            out = server.inflate(
                chunk, fin=i == len(chunks) - 1, max_size=max_size, already=produced
            )
            produced += len(out)
    except ProtocolError:
        pass
    if max_size is not None:
        assert produced <= max_size


# --- threshold and memory ------------------------------------------------------------


def test_min_size_threshold() -> None:
    """Messages under min_size are not worth compressing; min_size=0 compresses all."""
    server = PerMessageDeflate(is_server_side=True)
    assert server.min_size == DEFAULT_MIN_SIZE == 32
    assert not server.should_compress(31)
    assert server.should_compress(32)
    assert PerMessageDeflate(is_server_side=True, min_size=0).should_compress(0)
    factory = ServerDeflateFactory(min_size=100)
    result = factory.accept([[]])
    assert result is not None
    assert not result[1].should_compress(99)
    assert result[1].should_compress(100)


def test_zlib_objects_are_lazy_and_dropped_without_context_takeover() -> None:
    """No zlib memory before use, and none kept between messages without context takeover."""
    server, client = pair(server_no_context_takeover=True, client_no_context_takeover=True)
    assert server.memory_estimate() == 0
    assert server.memory_estimate(peak=True) > 0
    payload = client.deflate(b"hello " * 10)
    assert client.memory_estimate() == 0
    assert inflate_all(server, payload) == b"hello " * 10
    assert server.memory_estimate() == 0


def test_zlib_objects_kept_with_context_takeover() -> None:
    """With context takeover the zlib objects persist between messages."""
    server, client = pair(server_max_window_bits=12, client_max_window_bits=12)
    inflate_all(client, server.deflate(b"hello " * 10))
    inflate_all(server, client.deflate(b"hello " * 10))
    assert server.memory_estimate() == server.memory_estimate(peak=True)
    assert client.memory_estimate() == client.memory_estimate(peak=True)
    assert 0 < server.memory_estimate() < 64 * 1024


def test_decompressor_kept_mid_message() -> None:
    """Without context takeover the inflater survives until the message's last piece."""
    server, client = pair(client_no_context_takeover=True)
    payload = client.deflate(b"abc" * 100)
    server.inflate(payload[:5], fin=False, max_size=None)
    assert server.memory_estimate() > 0
    server.inflate(payload[5:], fin=True, max_size=None)
    assert server.memory_estimate() == 0


# --- sending policy: adaptive skipping and level by size ------------------------------

TAIL = b"\x00\x00\xff\xff"
# Compressible: JSON-like events with varying numbers (about 0.1 of their size at level 6).
TEXT = b"".join(b'{"event": "tick", "n": %d, "ok": true}\n' % i for i in range(20_000))
# Larger than one stored block, so our stored encoding differs from zlib's (whose
# stored blocks for incompressible input are at most a few KiB with memLevel 5).
BIG = 70_000


def noise(size: int, seed: int = 0) -> bytes:
    """``size`` incompressible bytes, reproducible from ``seed``."""
    return random.Random(seed).randbytes(size)


def stored(message: bytes) -> bytes:
    """``message`` as our stored blocks: 64 KiB - 1 per block, then the final 00."""
    out = b""
    for start in range(0, len(message), 0xFFFF):
        chunk = message[start : start + 0xFFFF]
        out += bytes([0]) + len(chunk).to_bytes(2, "little")
        out += (len(chunk) ^ 0xFFFF).to_bytes(2, "little") + chunk
    return out + b"\x00"


def skips(ext: PerMessageDeflate, count: int, size: int = BIG, seed: int = 0) -> list[bool]:
    """Send ``count`` incompressible messages; True for each that went out as stored blocks."""
    out = []
    for i in range(count):
        message = noise(size, seed + i)
        assert ext.should_compress(size)
        out.append(ext.deflate(message) == stored(message))
    return out


def fresh_stream(level: int, data: bytes, bits: int = 12) -> bytes:
    """``data`` deflated by a new zlib compressor, as one message (tail stripped)."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, -bits, DEFAULT_MEM_LEVEL)
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(TAIL)
    return out[:-4]


def test_incompressible_data_is_stored_after_the_first_probe() -> None:
    """The first incompressible large message is compressed; later ones go out stored."""
    server, client = pair()
    assert skips(server, 30) == [False] + [True] * 29


def test_doubt_ends_after_a_compressible_run() -> None:
    """In doubt, compressible messages are compressed; DOUBT_EXIT of them end the sampling."""
    server, client = pair()
    skips(server, 3)
    for i in range(DOUBT_EXIT):
        message = TEXT[i * 100 :][:BIG]
        payload = server.deflate(message)
        assert len(payload) < len(message) // 5
        assert inflate_all(client, payload) == message
    assert skips(server, 3, seed=5) == [False, True, True]  # probed in full again, then stored


def test_doubt_survives_a_short_compressible_run() -> None:
    """Fewer than DOUBT_EXIT compressible messages leave the sender sampling."""
    server, client = pair()
    skips(server, 2)
    for i in range(DOUBT_EXIT - 1):
        message = TEXT[i * 100 :][:BIG]
        assert inflate_all(client, server.deflate(message)) == message
    assert skips(server, 2, seed=5) == [True, True]


def test_skipped_messages_round_trip_and_drop_the_compressor() -> None:
    """Stored messages inflate at the peer; the compressor is dropped, so later ones stay valid."""
    server, client = pair()
    inflater = zlib.decompressobj(-15)
    messages = [TEXT[:500], noise(BIG), noise(BIG, 1), TEXT[:500], TEXT[100:BIG], noise(BIG, 2)]
    kinds = []
    for message in messages:
        payload = server.deflate(message)
        assert inflate_all(client, payload) == message
        assert inflater.decompress(payload + TAIL) == message
        kinds.append(payload == stored(message))
        if kinds[-1]:
            assert server.memory_estimate() == 0
    assert kinds == [False, False, True, False, False, True]


def test_small_messages_are_compressed_in_doubt() -> None:
    """Messages under ADAPTIVE_MIN_SIZE are compressed in doubt and do not end it."""
    server, client = pair()
    skips(server, 1)
    for i in range(2 * DOUBT_EXIT):
        message = TEXT[i : i + ADAPTIVE_MIN_SIZE - 1]
        payload = server.deflate(message)
        assert len(payload) < len(message) // 2
        assert inflate_all(client, payload) == message
        small_noise = noise(ADAPTIVE_MIN_SIZE - 1, i)
        payload = server.deflate(small_noise)
        assert payload != stored(small_noise)
        assert inflate_all(client, payload) == small_noise
    assert skips(server, 1) == [True]


def test_sample_is_taken_from_the_middle() -> None:
    """In doubt, a message that is incompressible only at its ends is still compressed."""
    server, client = pair()
    skips(server, 1)
    message = noise(BIG // 4) + TEXT[: BIG // 2] + noise(BIG // 4, 1)
    payload = server.deflate(message)
    assert payload != stored(message)
    assert inflate_all(client, payload) == message


def test_compressible_data_keeps_being_compressed() -> None:
    """Compressible messages of every size are always compressed, well."""
    server, client = pair(server_max_window_bits=12)
    offset = 0
    for size in [40, 300, ADAPTIVE_MIN_SIZE, FAST_LEVEL_MIN_SIZE, 100_000] * 20:
        message = TEXT[offset : offset + size]
        offset = (offset + size) % (len(TEXT) - 100_000)
        assert server.should_compress(size)
        payload = server.deflate(message)
        assert inflate_all(client, payload) == message
        assert len(payload) < len(message) * 0.25 or size < ADAPTIVE_MIN_SIZE


def test_fragmented_message_is_judged_as_a_whole() -> None:
    """A fragmented message is judged after its last fragment and skipped whole."""
    server, client = pair()
    first, rest = noise(ADAPTIVE_MIN_SIZE), noise(BIG, seed=1)
    payload = server.deflate(first, fin=False) + server.deflate(rest)
    assert inflate_all(client, payload) == first + rest
    # In doubt now: the first fragment's sample sends every fragment stored.
    pieces = [server.deflate(rest, fin=False), server.deflate(b"", fin=False)]
    pieces.append(server.deflate(first))
    assert b"".join(pieces) == stored(rest)[:-1] + stored(first)
    assert inflate_all(client, b"".join(pieces)) == rest + first


def test_large_messages_use_fast_level() -> None:
    """A large message starts a fresh FAST_COMPRESS_LEVEL stream; small ones use the level."""
    assert FAST_COMPRESS_LEVEL < DEFAULT_COMPRESS_LEVEL
    small = TEXT[:500]
    large = TEXT[1000 : 1000 + FAST_LEVEL_MIN_SIZE]
    server = PerMessageDeflate(is_server_side=True, server_max_window_bits=12)
    assert server.deflate(small) == fresh_stream(DEFAULT_COMPRESS_LEVEL, small)
    assert server.deflate(large) == fresh_stream(FAST_COMPRESS_LEVEL, large)
    server = PerMessageDeflate(
        is_server_side=True, server_max_window_bits=12, compress_level=FAST_COMPRESS_LEVEL
    )
    server.deflate(small)
    assert server.deflate(large) != fresh_stream(FAST_COMPRESS_LEVEL, large)  # kept context


def test_fast_level_needs_a_wide_window() -> None:
    """With a window under FAST_LEVEL_MIN_WINDOW_BITS, large messages keep the level."""
    bits = FAST_LEVEL_MIN_WINDOW_BITS - 1
    large = TEXT[: 2 * FAST_LEVEL_MIN_SIZE]
    server = PerMessageDeflate(is_server_side=True, server_max_window_bits=bits)
    assert server.deflate(large) == fresh_stream(DEFAULT_COMPRESS_LEVEL, large, bits)


def test_back_from_fast_level_keeps_context() -> None:
    """The first small message after a large one is primed with the large one's end."""
    large = TEXT[: FAST_LEVEL_MIN_SIZE + 3000]
    small = large[-300:]
    server, client = pair(server_max_window_bits=12)
    inflater = zlib.decompressobj(-12)
    for message in (large, small):
        payload = server.deflate(message)
        assert inflate_all(client, payload) == message
        assert inflater.decompress(payload + TAIL) == message
    primed = zlib.compressobj(
        DEFAULT_COMPRESS_LEVEL, zlib.DEFLATED, -12, DEFAULT_MEM_LEVEL, zdict=large[-4096:]
    )
    expected = primed.compress(small) + primed.flush(zlib.Z_SYNC_FLUSH)
    assert payload == expected[:-4]
    assert len(payload) < 10


def test_no_priming_without_context_takeover() -> None:
    """Without context takeover the peer forgets every message: nothing is primed."""
    large = TEXT[: FAST_LEVEL_MIN_SIZE + 3000]
    small = large[-300:]
    server, client = pair(server_no_context_takeover=True, server_max_window_bits=12)
    assert inflate_all(client, server.deflate(large)) == large
    payload = server.deflate(small)
    assert payload == fresh_stream(DEFAULT_COMPRESS_LEVEL, small)
    assert inflate_all(client, payload) == small


def test_stored_message_is_never_primed_over() -> None:
    """After a stored message the next compressor is not primed with older data."""
    server, client = pair(server_max_window_bits=12)
    inflater = zlib.decompressobj(-12)
    skips(server, 1)  # in doubt from now on
    large = TEXT[:BIG]
    for message in (large, noise(BIG, 1), large[-300:]):
        payload = server.deflate(message)
        assert inflate_all(client, payload) == message
        assert inflater.decompress(payload + TAIL) == message
    assert server.deflate(noise(BIG, 2)) == stored(noise(BIG, 2))


def test_level_switches_keep_one_compressor() -> None:
    """Level switches and stored messages replace the compressor: zlib memory stays bounded."""
    server = PerMessageDeflate(is_server_side=True, server_max_window_bits=12)
    small, large = TEXT[:100], TEXT[: FAST_LEVEL_MIN_SIZE * 2]
    server.deflate(small)
    one = server.memory_estimate()
    assert 0 < one < 64 * 1024
    tracemalloc.start()
    try:
        for _ in range(20):
            server.deflate(large)
            server.deflate(small)
            skips(server, 2, size=ADAPTIVE_MIN_SIZE)
            for _ in range(DOUBT_EXIT):
                server.deflate(TEXT[:ADAPTIVE_MIN_SIZE])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * one + 2 * len(large)
    assert server.memory_estimate() in (0, one)


@contextlib.contextmanager
def small_policy() -> Iterator[None]:
    """Shrink the policy's sizes and runs so short messages exercise every switch."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(deflate_module, "ADAPTIVE_MIN_SIZE", 64)
        mp.setattr(deflate_module, "SAMPLE_SIZE", 48)
        mp.setattr(deflate_module, "DOUBT_EXIT", 2)
        mp.setattr(deflate_module, "FAST_LEVEL_MIN_SIZE", 128)
        yield


policy_messages = st.lists(
    st.tuples(
        st.booleans(),  # compressible?
        st.integers(min_value=0, max_value=600),  # size
        st.integers(min_value=0, max_value=2**32),  # seed
        st.lists(st.integers(min_value=0), max_size=3),  # fragment cuts
        st.sampled_from([None, None, None, True, False]),  # compress= override
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(
    no_context_takeover=st.booleans(),
    bits=st.integers(min_value=9, max_value=15),
    level=st.integers(min_value=0, max_value=9),
    messages=policy_messages,
)
def test_policy_switches_round_trip(
    no_context_takeover: bool,
    bits: int,
    level: int,
    messages: list[tuple[bool, int, int, list[int], bool | None]],
) -> None:
    """Random mixes of stored, fast and normal messages, fragmented or not, decode exactly."""
    with small_policy():
        sender = PerMessageDeflate(
            is_server_side=True,
            server_no_context_takeover=no_context_takeover,
            server_max_window_bits=bits,
            compress_level=level,
            min_size=0,
        )
        peer = PerMessageDeflate(
            is_server_side=False,
            server_no_context_takeover=no_context_takeover,
            server_max_window_bits=bits,
        )
        inflater = zlib.decompressobj(-bits)
        for compressible, size, seed, cuts, force in messages:
            message = TEXT[seed % 1000 :][:size] if compressible else noise(size, seed)
            fragments = split(message, cuts)
            compress = sender.should_compress(len(fragments[0])) if force is None else force
            if not compress:
                continue  # sent as is (RSV1 clear): neither side's window sees it
            payload = b"".join(
                sender.deflate(fragment, fin=i == len(fragments) - 1)
                for i, fragment in enumerate(fragments)
            )
            assert inflate_all(peer, payload) == message
            if no_context_takeover:
                inflater = zlib.decompressobj(-bits)
            assert inflater.decompress(payload + TAIL) == message
