"""Tests for tidewire.protocol.handshake: RFC 6455 section 4 and the header grammars."""

from __future__ import annotations

import base64
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidewire.errors import HandshakeError, InvalidStatus
from tidewire.protocol.handshake import (
    GUID,
    SEC_WEBSOCKET_VERSION,
    SERVER,
    WEBSOCKET_VERSION,
    ExtensionList,
    accept_key,
    build_accept_response,
    build_reject_response,
    build_request,
    check_request,
    check_response,
    generate_key,
    is_upgrade_request,
    parse_extension_header,
    parse_subprotocol_header,
    parse_tokens,
    select_subprotocol,
    serialize_extension_header,
)
from tidewire.protocol.http import Headers, Request, Response, parse_request, parse_response

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

BASE_HEADERS = [
    ("Host", "server.example.com"),
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", KEY),
    ("Sec-WebSocket-Version", "13"),
    ("Origin", "http://example.com"),
]


def make_request(
    *,
    method: str = "GET",
    path: str = "/chat",
    drop: tuple[str, ...] = (),
    replace: dict[str, str] | None = None,
    add: list[tuple[str, str]] | None = None,
) -> Request:
    """A valid handshake request with some headers dropped, replaced or added."""
    replace = replace or {}
    pairs = [(n, replace.get(n, v)) for n, v in BASE_HEADERS if n not in drop]
    return Request(method, path, Headers(pairs + (add or [])))


def make_response(
    *,
    status: int = 101,
    drop: tuple[str, ...] = (),
    replace: dict[str, str] | None = None,
    add: list[tuple[str, str]] | None = None,
) -> Response:
    """A valid 101 answer to KEY with some headers dropped, replaced or added."""
    replace = replace or {}
    base = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", ACCEPT)]
    pairs = [(n, replace.get(n, v)) for n, v in base if n not in drop]
    return Response(status, "Switching Protocols", Headers(pairs + (add or [])))


def handshake_error(request: Request) -> HandshakeError:
    """The HandshakeError check_request raises for ``request``."""
    with pytest.raises(HandshakeError) as info:
        check_request(request)
    return info.value


def response_error(response: Response, offered: list[str] | None = None) -> HandshakeError:
    """The HandshakeError check_response raises for ``response``."""
    with pytest.raises(HandshakeError) as info:
        check_response(response, KEY, offered_subprotocols=offered)
    return info.value


# Keys


def test_accept_key_rfc_sample() -> None:
    """RFC 6455 section 1.3: the sample key gives the sample accept value."""
    assert GUID == "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
    assert accept_key(KEY) == ACCEPT


def test_generate_key() -> None:
    """A key is base64 of 16 random bytes, different each time."""
    keys = {generate_key() for _ in range(50)}
    assert len(keys) == 50
    for key in keys:
        assert len(key) == 24
        assert len(base64.b64decode(key, validate=True)) == 16


# Token lists


@pytest.mark.parametrize(
    ("value", "tokens"),
    [
        ("Upgrade", ["Upgrade"]),
        ("keep-alive, Upgrade", ["keep-alive", "Upgrade"]),
        (" a ,\tb\t,, ,c ", ["a", "b", "c"]),
        ("", []),
        (" , ,", []),
    ],
)
def test_parse_tokens(value: str, tokens: list[str]) -> None:
    """Comma lists keep case, trim OWS and skip empty elements."""
    assert parse_tokens(value) == tokens


@pytest.mark.parametrize("value", ["a b", "a;b", 'a, "b"', "a,b=c", "a/1", "é", "a\x00"])
def test_parse_tokens_refuses_junk(value: str) -> None:
    """Anything that is not a token raises ValueError."""
    with pytest.raises(ValueError):
        parse_tokens(value)


def test_parse_tokens_is_linear() -> None:
    """A huge hostile list is refused quickly (no regex backtracking)."""
    value = "a," * 200_000 + " " * 100_000 + "\x00"
    start = time.perf_counter()
    with pytest.raises(ValueError):
        parse_tokens(value)
    assert time.perf_counter() - start < 2


def test_parse_subprotocol_header() -> None:
    """Several header lines join into one list; empty gives []."""
    assert parse_subprotocol_header(["chat, superchat", "v2.json"]) == [
        "chat",
        "superchat",
        "v2.json",
    ]
    assert parse_subprotocol_header([]) == []
    with pytest.raises(ValueError):
        parse_subprotocol_header(["chat superchat"])


# Extension header grammar


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["permessage-deflate"], [("permessage-deflate", [])]),
        (
            ["permessage-deflate; client_max_window_bits"],
            [("permessage-deflate", [("client_max_window_bits", None)])],
        ),
        (
            ["permessage-deflate; client_max_window_bits=10; server_no_context_takeover"],
            [
                (
                    "permessage-deflate",
                    [("client_max_window_bits", "10"), ("server_no_context_takeover", None)],
                )
            ],
        ),
        (
            ['permessage-deflate; server_max_window_bits="10"'],
            [("permessage-deflate", [("server_max_window_bits", "10")])],
        ),
        (['x; p="a\\b\\c"'], [("x", [("p", "abc")])]),
        (
            ["foo, bar; baz=2", "qux"],
            [("foo", []), ("bar", [("baz", "2")]), ("qux", [])],
        ),
        ([" foo ;  a = 1 ,\t, bar\t"], [("foo", [("a", "1")]), ("bar", [])]),
        (["foo", "foo; x"], [("foo", []), ("foo", [("x", None)])]),
        ([], []),
        ([""], []),
    ],
)
def test_parse_extension_header(values: list[str], expected: ExtensionList) -> None:
    """RFC 6455 section 9.1 grammar, including quoted values and several header lines."""
    assert parse_extension_header(values) == expected


@pytest.mark.parametrize(
    "value",
    [
        "; foo",
        "foo;",
        "foo; ;",
        "foo; a=",
        "foo; a=;b",
        "foo; =1",
        "foo bar",
        "foo; a b",
        "foo; a=1 2",
        'foo; a="1',
        'foo; a="1 2"',
        'foo; a=""',
        'foo; a="x,y"',
        '"foo"',
        "foo=1",
        "foo; a==1",
        "foo; a=1=2",
        "fo/o",
        "foo; a=é",
        "foo\r\nbar",
    ],
)
def test_parse_extension_header_bad_syntax(value: str) -> None:
    """Bad syntax raises ValueError with a one-line reason."""
    with pytest.raises(ValueError) as info:
        parse_extension_header([value])
    assert "\n" not in str(info.value)


def test_parse_extension_header_is_linear() -> None:
    """An unterminated quoted string of 100k characters fails quickly."""
    value = 'foo; a="' + "\\a" * 50_000 + "b" * 50_000
    start = time.perf_counter()
    with pytest.raises(ValueError):
        parse_extension_header([value])
    assert time.perf_counter() - start < 2


def test_serialize_extension_header() -> None:
    """Extensions serialize with '; ' between params and ', ' between extensions."""
    extensions: ExtensionList = [
        (
            "permessage-deflate",
            [("client_max_window_bits", None), ("server_max_window_bits", "10")],
        ),
        ("x", []),
    ]
    value = serialize_extension_header(extensions)
    assert value == "permessage-deflate; client_max_window_bits; server_max_window_bits=10, x"
    assert parse_extension_header([value]) == extensions


@pytest.mark.parametrize(
    "extensions",
    [[("a b", [])], [("a", [("p q", None)])], [("a", [("p", "1 2")])], [("a", [("p", "")])]],
)
def test_serialize_extension_header_refuses_non_tokens(extensions: ExtensionList) -> None:
    """Names and values that are not tokens raise ValueError."""
    with pytest.raises(ValueError):
        serialize_extension_header(extensions)


_TOKENS = st.text(alphabet="abcXYZ019-_.!#$%&'*+^`|~", min_size=1, max_size=8)


@given(st.lists(st.tuples(_TOKENS, st.lists(st.tuples(_TOKENS, st.none() | _TOKENS), max_size=3))))
def test_extension_header_round_trip(extensions: ExtensionList) -> None:
    """serialize then parse gives the same list."""
    assert parse_extension_header([serialize_extension_header(extensions)]) == extensions


@settings(max_examples=500)
@given(st.lists(st.text(max_size=40), max_size=3))
def test_parse_extension_header_random_text(values: list[str]) -> None:
    """Random text raises only ValueError."""
    try:
        parse_extension_header(values)
    except ValueError:
        pass


@settings(max_examples=500)
@given(
    st.lists(
        st.sampled_from(["foo", "a", "1", ";", ",", "=", '"', "\\", " ", "\t", "x y", '"q"', "é"]),
        max_size=20,
    ).map("".join)
)
def test_parse_extension_header_random_fragments(value: str) -> None:
    """Random grammar fragments raise only ValueError; accepted values round-trip."""
    try:
        parsed = parse_extension_header([value])
    except ValueError:
        return
    assert parse_extension_header([serialize_extension_header(parsed)]) == parsed


@settings(max_examples=500)
@given(st.text(max_size=60))
def test_parse_tokens_random_text(value: str) -> None:
    """Random text raises only ValueError."""
    try:
        tokens = parse_tokens(value)
    except ValueError:
        return
    assert all(tokens)


# Server side: check_request


def test_check_request_returns_key() -> None:
    """A valid request passes and yields its key."""
    assert check_request(make_request()) == KEY


@pytest.mark.parametrize(
    ("kwargs", "status", "fragment"),
    [
        ({"method": "POST"}, 405, "GET"),
        ({"path": "chat"}, 400, "target"),
        ({"path": "*"}, 400, "target"),
        ({"path": "ftp://example.com/chat"}, 400, "target"),
        ({"drop": ("Host",)}, 400, "Host"),
        ({"add": [("Host", "other.example.com")]}, 400, "Host"),
        ({"drop": ("Upgrade",)}, 400, "Upgrade"),
        ({"replace": {"Upgrade": "h2c"}}, 400, "Upgrade"),
        ({"replace": {"Upgrade": "websockets"}}, 400, "Upgrade"),
        ({"drop": ("Connection",)}, 400, "Connection"),
        ({"replace": {"Connection": "keep-alive"}}, 400, "Connection"),
        ({"replace": {"Connection": "upgraded"}}, 400, "Connection"),
        ({"drop": ("Sec-WebSocket-Key",)}, 400, "Sec-WebSocket-Key"),
        ({"add": [("Sec-WebSocket-Key", KEY)]}, 400, "Sec-WebSocket-Key"),
        ({"replace": {"Sec-WebSocket-Key": "not base64!"}}, 400, "Sec-WebSocket-Key"),
        ({"replace": {"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ"}}, 400, "Sec-WebSocket-Key"),
        ({"replace": {"Sec-WebSocket-Key": "YWJjZGVmZ2hpamtsbW5v"}}, 400, "Sec-WebSocket-Key"),
        ({"replace": {"Sec-WebSocket-Key": "YWJjZGVmZ2hpamtsbW5vcHE="}}, 400, "Sec-WebSocket-Key"),
        ({"replace": {"Sec-WebSocket-Key": ""}}, 400, "Sec-WebSocket-Key"),
        ({"drop": ("Sec-WebSocket-Version",)}, 426, "Sec-WebSocket-Version"),
        ({"replace": {"Sec-WebSocket-Version": "8"}}, 426, "Sec-WebSocket-Version"),
        ({"replace": {"Sec-WebSocket-Version": "13, 8"}}, 426, "Sec-WebSocket-Version"),
        ({"add": [("Sec-WebSocket-Version", "13")]}, 400, "Sec-WebSocket-Version"),
        ({"add": [("Origin", "http://evil.example")]}, 400, "Origin"),
        ({"add": [("Content-Length", "5")]}, 400, "Content-Length"),
        ({"add": [("Transfer-Encoding", "chunked")]}, 400, "Transfer-Encoding"),
    ],
)
def test_check_request_failures(kwargs: dict[str, object], status: int, fragment: str) -> None:
    """Each RFC 6455 section 4.2.1 violation raises with its status and names the header."""
    error = handshake_error(make_request(**kwargs))  # type: ignore[arg-type]
    assert error.status == status
    assert fragment in str(error)
    assert "\n" not in str(error)


def test_check_request_version_checked_before_key() -> None:
    """A pre-RFC client without key or version gets 426, not 400."""
    request = make_request(drop=("Sec-WebSocket-Key", "Sec-WebSocket-Version"))
    assert handshake_error(request).status == 426


@pytest.mark.parametrize(
    "extra",
    [
        {"replace": {"Connection": "keep-alive, Upgrade"}},
        {"replace": {"Connection": "UPGRADE"}},
        {"replace": {"Connection": "keep-alive"}, "add": [("Connection", "upgrade")]},
        {"replace": {"Upgrade": "WebSocket"}},
        {"replace": {"Upgrade": "HTTP/2.0, websocket"}},
        {"replace": {"Upgrade": "foo/1, WEBSOCKET ,"}},
    ],
)
def test_check_request_tokens_case_insensitive(extra: dict[str, object]) -> None:
    """Upgrade and Connection match case-insensitively inside comma lists."""
    assert check_request(make_request(**extra)) == KEY  # type: ignore[arg-type]


def test_check_request_accepts_optional_fields() -> None:
    """No Origin, Content-Length: 0 and an absolute-form target are fine."""
    assert check_request(make_request(drop=("Origin",), add=[("Content-Length", "0")])) == KEY
    assert check_request(make_request(path="ws://server.example.com/chat")) == KEY


def test_is_upgrade_request() -> None:
    """Only a request with an Upgrade header is routed to the WebSocket handshake."""
    assert is_upgrade_request(make_request())
    assert is_upgrade_request(make_request(replace={"Upgrade": "h2c"}))
    assert not is_upgrade_request(make_request(drop=("Upgrade",)))


# Server side: responses


def test_build_accept_response() -> None:
    """The 101 answer carries Upgrade, Connection, the accept value and Server."""
    response = build_accept_response(KEY, subprotocol="chat", extensions="x; y=1")
    assert (response.status, response.reason) == (101, "Switching Protocols")
    headers = response.headers
    assert headers["Upgrade"] == "websocket"
    assert headers["Connection"] == "Upgrade"
    assert headers["Sec-WebSocket-Accept"] == ACCEPT
    assert headers["Sec-WebSocket-Protocol"] == "chat"
    assert headers["Sec-WebSocket-Extensions"] == "x; y=1"
    assert headers["Server"] == SERVER == "tidewire"
    assert response.body == b""


def test_build_accept_response_minimal_and_extra() -> None:
    """Without options there is no protocol or extensions header; extra headers are appended."""
    response = build_accept_response(KEY, extra_headers=[("Set-Cookie", "a=b")])
    assert "Sec-WebSocket-Protocol" not in response.headers
    assert "Sec-WebSocket-Extensions" not in response.headers
    assert response.headers.items()[-1] == ("Set-Cookie", "a=b")
    with pytest.raises(ValueError):
        build_accept_response(KEY, extra_headers=[("X", "a\r\nb")])
    with pytest.raises(ValueError):
        build_accept_response(KEY, subprotocol="a b")


def test_build_reject_response_426_carries_version() -> None:
    """A 426 names the version we speak (RFC 6455 section 4.2.2)."""
    response = build_reject_response(426, "unsupported Sec-WebSocket-Version '8'")
    assert response.status == 426
    assert response.headers[SEC_WEBSOCKET_VERSION] == WEBSOCKET_VERSION == "13"
    assert response.headers["Upgrade"] == "websocket"
    assert b"Sec-WebSocket-Version: 13\r\n" in response.serialize()


def test_build_reject_response_body_and_close() -> None:
    """A rejection has the one-line reason as text body and Connection: close."""
    response = build_reject_response(400, "missing Host header\nsecond line")
    assert response.body == b"missing Host header second line\n"
    assert response.headers["Connection"] == "close"
    assert response.headers["Content-Length"] == str(len(response.body))
    assert SEC_WEBSOCKET_VERSION not in response.headers
    assert build_reject_response(405, "x").headers["Allow"] == "GET"


def test_reject_response_from_check_request_error() -> None:
    """A check_request error turns into a rejection with its status and message."""
    error = handshake_error(make_request(replace={"Sec-WebSocket-Version": "8"}))
    response = build_reject_response(error.status, str(error))
    parsed = parse_response(response.serialize())
    assert parsed is not None
    assert parsed[0].status == 426
    assert parsed[0].headers["Sec-WebSocket-Version"] == "13"


def test_select_subprotocol() -> None:
    """The server's preference order wins; None when nothing matches."""
    assert select_subprotocol(["a", "b", "c"], ["c", "b"]) == "c"
    assert select_subprotocol(["a"], ["b"]) is None
    assert select_subprotocol([], ["b"]) is None
    assert select_subprotocol(["Chat"], ["chat"]) is None


# Client side


def test_build_request() -> None:
    """The request has the RFC 6455 section 4.1 fields."""
    request = build_request(
        "example.com:8080",
        "/chat?x=1",
        KEY,
        origin="https://example.com",
        subprotocols=["chat", "v2"],
        extensions="permessage-deflate",
        extra_headers={"Authorization": "Bearer t"},
        user_agent="test-agent",
    )
    assert request.method == "GET"
    assert request.path == "/chat?x=1"
    headers = request.headers
    assert headers["Host"] == "example.com:8080"
    assert headers["Upgrade"] == "websocket"
    assert headers["Connection"] == "Upgrade"
    assert headers["Sec-WebSocket-Key"] == KEY
    assert headers["Sec-WebSocket-Version"] == "13"
    assert headers["Origin"] == "https://example.com"
    assert headers["Sec-WebSocket-Protocol"] == "chat, v2"
    assert headers["Sec-WebSocket-Extensions"] == "permessage-deflate"
    assert headers["User-Agent"] == "test-agent"
    assert headers["Authorization"] == "Bearer t"


def test_build_request_minimal() -> None:
    """Without options only the required fields (and User-Agent) are sent."""
    request = build_request("h", "/", KEY, user_agent=None)
    names = [name for name, _ in request.headers]
    assert names == ["Host", "Upgrade", "Connection", "Sec-WebSocket-Key", "Sec-WebSocket-Version"]
    assert "User-Agent" in build_request("h", "/", KEY).headers


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("h\r\nX: y", "/", KEY), {}),
        (("h", "/a b", KEY), {}),
        (("h", "chat", KEY), {}),
        (("h", "/", KEY), {"subprotocols": ["a b"]}),
        (("h", "/", KEY), {"origin": "x\ny"}),
        (("h", "/", KEY), {"extra_headers": [("X", "\x00")]}),
    ],
)
def test_build_request_refuses_injection(
    args: tuple[str, str, str], kwargs: dict[str, object]
) -> None:
    """Values that would break the request raise ValueError."""
    with pytest.raises(ValueError):
        build_request(*args, **kwargs)  # type: ignore[arg-type]


def test_check_response_ok() -> None:
    """A valid 101 gives (None, []) with nothing negotiated."""
    assert check_response(make_response(), KEY, offered_subprotocols=None) == (None, [])


def test_check_response_subprotocol_and_extensions() -> None:
    """The chosen subprotocol and the parsed extensions are returned."""
    response = make_response(
        add=[
            ("Sec-WebSocket-Protocol", "chat"),
            ("Sec-WebSocket-Extensions", "permessage-deflate; server_no_context_takeover"),
        ]
    )
    assert check_response(response, KEY, offered_subprotocols=["v2", "chat"]) == (
        "chat",
        [("permessage-deflate", [("server_no_context_takeover", None)])],
    )


def test_check_response_tokens_case_insensitive() -> None:
    """Upgrade and Connection match case-insensitively; Connection may be a list."""
    response = make_response(replace={"Upgrade": "WebSocket", "Connection": "keep-alive, UPGRADE"})
    assert check_response(response, KEY, offered_subprotocols=None) == (None, [])


def test_check_response_invalid_status() -> None:
    """A status other than 101 raises InvalidStatus carrying the response."""
    response = Response.build(403, b"forbidden")
    with pytest.raises(InvalidStatus) as info:
        check_response(response, KEY, offered_subprotocols=None)
    assert info.value.status == 403
    assert info.value.response is response
    assert str(info.value) == "server rejected WebSocket connection: HTTP 403"


@pytest.mark.parametrize(
    ("response", "offered", "fragment"),
    [
        (make_response(drop=("Upgrade",)), None, "Upgrade"),
        (make_response(replace={"Upgrade": "h2c"}), None, "'h2c'"),
        (make_response(replace={"Upgrade": "websocket, h2c"}), None, "Upgrade"),
        (make_response(drop=("Connection",)), None, "Connection"),
        (make_response(replace={"Connection": "close"}), None, "'close'"),
        (make_response(drop=("Sec-WebSocket-Accept",)), None, "Sec-WebSocket-Accept"),
        (make_response(replace={"Sec-WebSocket-Accept": "bogus"}), None, "'bogus'"),
        (make_response(add=[("Sec-WebSocket-Accept", ACCEPT)]), None, "Sec-WebSocket-Accept"),
        (make_response(add=[("Sec-WebSocket-Protocol", "chat")]), None, "'chat'"),
        (make_response(add=[("Sec-WebSocket-Protocol", "chat")]), ["v2"], "'chat'"),
        (make_response(add=[("Sec-WebSocket-Protocol", "a, b")]), ["a", "b"], "more than one"),
        (
            make_response(add=[("Sec-WebSocket-Protocol", "a"), ("Sec-WebSocket-Protocol", "b")]),
            ["a", "b"],
            "more than one",
        ),
        (make_response(add=[("Sec-WebSocket-Protocol", "a b")]), ["a"], "Sec-WebSocket-Protocol"),
        (make_response(add=[("Sec-WebSocket-Extensions", "x;")]), None, "Sec-WebSocket-Extensions"),
    ],
)
def test_check_response_failures(
    response: Response, offered: list[str] | None, fragment: str
) -> None:
    """Each client-side violation raises HandshakeError 502 naming the header and value."""
    error = response_error(response, offered)
    assert not isinstance(error, InvalidStatus)
    assert error.status == 502
    assert fragment in str(error)


# Round trips


def test_round_trip_request() -> None:
    """build_request -> serialize -> parse_request -> check_request gives the key back."""
    key = generate_key()
    request = build_request("example.com", "/chat?room=1", key, subprotocols=["chat"])
    result = parse_request(request.serialize())
    assert result is not None
    parsed, _ = result
    assert parsed == request
    assert check_request(parsed) == key
    assert parse_subprotocol_header(parsed.headers.get_all("Sec-WebSocket-Protocol")) == ["chat"]


def test_round_trip_response() -> None:
    """build_accept_response -> serialize -> parse_response -> check_response succeeds."""
    key = generate_key()
    response = build_accept_response(key, subprotocol="chat", extensions="x; y=1")
    result = parse_response(response.serialize())
    assert result is not None
    parsed, consumed = result
    assert parsed == response
    assert consumed == len(response.serialize())
    assert check_response(parsed, key, offered_subprotocols=["chat"]) == (
        "chat",
        [("x", [("y", "1")])],
    )


def test_round_trip_full_handshake() -> None:
    """Client request through server checks and back to the client's checks."""
    key = generate_key()
    wire = build_request("h", "/", key, subprotocols=["b", "a"]).serialize()
    result = parse_request(wire)
    assert result is not None
    request = result[0]
    server_key = check_request(request)
    offer = parse_subprotocol_header(request.headers.get_all("Sec-WebSocket-Protocol"))
    chosen = select_subprotocol(offer, ["a", "b"])
    answer = build_accept_response(server_key, subprotocol=chosen).serialize()
    parsed = parse_response(answer)
    assert parsed is not None
    assert check_response(parsed[0], key, offered_subprotocols=["b", "a"]) == ("a", [])
