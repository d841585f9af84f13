"""Tests for tidewire.protocol.http: Headers, Request, Response and head parsing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidewire.errors import HandshakeError
from tidewire.protocol.http import (
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    MAX_LINE_BYTES,
    Headers,
    Request,
    Response,
    parse_request,
    parse_response,
    request_body_size,
)

REQUEST = (
    b"GET /chat?room=a&room=b HTTP/1.1\r\n"
    b"Host: server.example.com\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"\r\n"
)

RESPONSE = (
    b"HTTP/1.1 101 Switching Protocols\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
    b"\r\n"
)


def parsed_request(data: bytes) -> Request:
    """Parse a complete request head or fail the test."""
    result = parse_request(data)
    assert result is not None
    return result[0]


def request_error(data: bytes, **limits: int | None) -> HandshakeError:
    """The HandshakeError parse_request raises for ``data``."""
    with pytest.raises(HandshakeError) as info:
        parse_request(data, **limits)
    return info.value


def response_error(data: bytes, **limits: int | None) -> HandshakeError:
    """The HandshakeError parse_response raises for ``data``."""
    with pytest.raises(HandshakeError) as info:
        parse_response(data, **limits)
    return info.value


# Headers


def test_headers_lookup_is_case_insensitive() -> None:
    """Any spelling of a name finds the field; the original case is kept."""
    headers = Headers([("Content-Type", "text/plain")])
    assert headers["content-type"] == "text/plain"
    assert headers.get("CONTENT-TYPE") == "text/plain"
    assert "cOnTeNt-TyPe" in headers
    assert headers.items() == [("Content-Type", "text/plain")]


def test_headers_multiple_values_keep_order() -> None:
    """Repeated fields keep their order; [] and get return the first."""
    headers = Headers([("X-A", "1"), ("Y", "y"), ("x-a", "2")])
    assert headers["X-A"] == "1"
    assert headers.get_all("x-A") == ["1", "2"]
    assert list(headers) == [("X-A", "1"), ("Y", "y"), ("x-a", "2")]
    assert len(headers) == 3


def test_headers_missing_name() -> None:
    """A missing field raises KeyError on [], gives the default on get, [] on get_all."""
    headers = Headers()
    with pytest.raises(KeyError):
        headers["Host"]
    assert headers.get("Host") is None
    assert headers.get("Host", "x") == "x"
    assert headers.get_all("Host") == []
    assert "Host" not in headers
    assert 1 not in headers


def test_headers_from_dict() -> None:
    """A dict builds headers in its order."""
    headers = Headers({"A": "1", "B": "2"})
    assert headers.items() == [("A", "1"), ("B", "2")]


def test_headers_setitem_replaces_all_values() -> None:
    """Setting a field drops every earlier value of that name."""
    headers = Headers([("A", "1"), ("B", "2"), ("a", "3")])
    headers["A"] = "4"
    assert headers.get_all("a") == ["4"]
    assert headers.items() == [("B", "2"), ("A", "4")]
    headers["C"] = "5"
    assert headers["c"] == "5"


def test_headers_delitem() -> None:
    """Deleting removes every value; deleting a missing name raises KeyError."""
    headers = Headers([("A", "1"), ("B", "2"), ("a", "3")])
    del headers["a"]
    assert headers.items() == [("B", "2")]
    assert "A" not in headers
    with pytest.raises(KeyError):
        del headers["A"]


def test_headers_copy_is_independent() -> None:
    """A copy does not see later changes to the original."""
    headers = Headers([("A", "1")])
    copy = headers.copy()
    headers.add("A", "2")
    assert copy.get_all("A") == ["1"]
    assert copy == Headers([("A", "1")])


def test_headers_equality() -> None:
    """Equal when each name (any case) has the same values in the same order."""
    assert Headers([("A", "1"), ("B", "2")]) == Headers([("b", "2"), ("a", "1")])
    assert Headers([("A", "1"), ("A", "2")]) != Headers([("A", "2"), ("A", "1")])
    assert Headers([("A", "1")]) != Headers([("A", "1"), ("B", "")])
    assert Headers() != {}


def test_headers_serialize() -> None:
    """Each field becomes 'Name: value' CRLF, with no final blank line."""
    headers = Headers([("Host", "a"), ("X-Empty", "")])
    assert headers.serialize() == b"Host: a\r\nX-Empty: \r\n"


@pytest.mark.parametrize(
    "value", ["a\r\nSet-Cookie: x", "a\nb", "a\rb", "a\x00b", "a\x7fb", "\u0100"]
)
def test_headers_refuse_injection_in_value(value: str) -> None:
    """CR, LF, NUL, other controls and non-Latin-1 in a value raise ValueError naming it."""
    headers = Headers()
    with pytest.raises(ValueError, match="X-Test"):
        headers.add("X-Test", value)
    with pytest.raises(ValueError, match="X-Test"):
        headers["X-Test"] = value
    with pytest.raises(ValueError, match="X-Test"):
        Headers([("X-Test", value)])
    assert len(headers) == 0


@pytest.mark.parametrize("name", ["", "X Test", "X:Test", "X\r\nY", "Ä"])
def test_headers_refuse_bad_names(name: str) -> None:
    """A name that is not a token raises ValueError."""
    with pytest.raises(ValueError, match="header name"):
        Headers().add(name, "v")


def test_headers_allow_tab_and_latin1_in_value() -> None:
    """HTAB and obs-text are legal field content (RFC 9110 section 5.5)."""
    headers = Headers([("X", "a\tb é")])
    assert headers.serialize() == "X: a\tb é\r\n".encode("latin-1")


# Request and Response values


def test_request_path_only_and_query() -> None:
    """path_only drops the query; query decodes it with parse_qs."""
    request = Request("GET", "/chat/room?x=1&x=2&y=%20", Headers())
    assert request.path_only == "/chat/room"
    assert request.query == {"x": ["1", "2"], "y": [" "]}
    assert Request("GET", "/", Headers()).query == {}


def test_request_absolute_form_path() -> None:
    """An absolute-form target yields its path and query."""
    request = Request("GET", "ws://example.com:8080/chat?a=b", Headers())
    assert request.path_only == "/chat"
    assert request.query == {"a": ["b"]}
    assert Request("GET", "http://example.com", Headers()).path_only == "/"


def test_request_serialize() -> None:
    """A request serializes to request line, fields, blank line, body."""
    request = Request("GET", "/x", Headers([("Host", "h")]))
    assert request.serialize() == b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n"


@pytest.mark.parametrize(("method", "path"), [("GET", "/a b"), ("GET", "/\r\nX: y"), ("G T", "/")])
def test_request_serialize_refuses_unsafe_request_line(method: str, path: str) -> None:
    """A method or target that would break the request line raises ValueError."""
    with pytest.raises(ValueError):
        Request(method, path, Headers()).serialize()


def test_request_is_frozen() -> None:
    """Request is a frozen value."""
    request = Request("GET", "/", Headers())
    with pytest.raises(AttributeError):
        request.path = "/x"  # type: ignore[misc]


def test_response_build_fills_framing() -> None:
    """build() adds the reason phrase, Content-Length, Content-Type and Connection: close."""
    response = Response.build(404, b"not found\n")
    assert response.reason == "Not Found"
    assert response.headers["Content-Length"] == "10"
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert response.headers["Connection"] == "close"
    assert response.serialize().startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert response.serialize().endswith(b"\r\n\r\nnot found\n")


def test_response_build_101_keeps_connection_open() -> None:
    """A 101 gets neither Connection: close nor Content-Length."""
    response = Response.build(101, headers=[("Upgrade", "websocket")])
    assert response.reason == "Switching Protocols"
    assert "Connection" not in response.headers
    assert "Content-Length" not in response.headers


def test_response_build_respects_given_headers() -> None:
    """Given headers win over defaults; Content-Length is always computed."""
    response = Response.build(
        200,
        b"{}",
        headers={"Content-Type": "application/json", "Content-Length": "99"},
    )
    assert response.headers.get_all("Content-Type") == ["application/json"]
    assert response.headers.get_all("Content-Length") == ["2"]


def test_response_build_no_body_statuses() -> None:
    """204 has no Content-Length and refuses a body; unknown statuses get an empty reason."""
    assert "Content-Length" not in Response.build(204).headers
    with pytest.raises(ValueError):
        Response.build(204, b"x")
    assert Response.build(599).reason == ""


def test_response_serialize_refuses_unsafe_reason() -> None:
    """A reason phrase with CR or LF raises ValueError."""
    with pytest.raises(ValueError):
        Response(200, "OK\r\nX: y", Headers()).serialize()


# parse_request


def test_limits_constants() -> None:
    """The documented defaults."""
    assert (MAX_LINE_BYTES, MAX_HEADERS, MAX_HEADER_BYTES) == (8192, 128, 16384)


def test_parse_request() -> None:
    """A handshake request parses into method, target and headers."""
    result = parse_request(REQUEST)
    assert result is not None
    request, consumed = result
    assert consumed == len(REQUEST)
    assert request.method == "GET"
    assert request.path == "/chat?room=a&room=b"
    assert request.headers["host"] == "server.example.com"
    assert request.headers.items()[0] == ("Host", "server.example.com")
    assert request.body == b""


def test_parse_request_leaves_following_bytes() -> None:
    """Bytes after the head (frames) are not consumed."""
    result = parse_request(bytearray(REQUEST + b"\x81\x80abcd"))
    assert result is not None
    assert result[1] == len(REQUEST)


def test_parse_request_no_headers() -> None:
    """A head with only a request line parses."""
    request = parsed_request(b"GET / HTTP/1.1\r\n\r\n")
    assert len(request.headers) == 0


def test_parse_request_trims_ows() -> None:
    """Spaces and tabs around a value are trimmed; empty values are kept."""
    request = parsed_request(b"GET / HTTP/1.1\r\nA:  \t x y \t\r\nB:\r\nC:   \r\n\r\n")
    assert request.headers.items() == [("A", "x y"), ("B", ""), ("C", "")]


def test_parse_request_incomplete_returns_none() -> None:
    """Every proper prefix of a head gives None."""
    for end in range(len(REQUEST)):
        assert parse_request(REQUEST[:end]) is None


def test_parse_request_one_byte_at_a_time() -> None:
    """A head arriving byte by byte parses to the same request."""
    buf = bytearray()
    result = None
    for byte in REQUEST:
        assert result is None
        buf.append(byte)
        result = parse_request(buf)
    assert result is not None
    assert result == parse_request(REQUEST)


def test_parse_request_long_request_line_fails_early() -> None:
    """An over-long request line raises 414 before its line ends."""
    data = b"GET /" + b"a" * 100
    assert parse_request(data, max_line=105) is None
    error = request_error(data + b"a", max_line=105)
    assert error.status == 414
    assert "max_line=105" in str(error)


def test_parse_request_long_request_line_complete() -> None:
    """A complete but over-long request line raises 414."""
    error = request_error(b"GET /" + b"a" * 200 + b" HTTP/1.1\r\n\r\n", max_line=100)
    assert error.status == 414


def test_parse_request_line_at_limit_with_pending_lf() -> None:
    """A line exactly at the limit whose LF has not arrived is not over it."""
    line = b"GET /" + b"a" * 86 + b" HTTP/1.1"
    assert len(line) == 100
    assert parse_request(line + b"\r", max_line=100) is None
    assert parse_request(line + b"\r\n\r\n", max_line=100) is not None


def test_parse_request_long_header_line_fails_early() -> None:
    """An over-long header line raises 431 before the head ends."""
    data = b"GET / HTTP/1.1\r\nCookie: " + b"x" * 200
    error = request_error(data, max_line=100)
    assert error.status == 431
    assert "header line too long" in str(error)
    assert "max_line=100" in str(error)


def test_parse_request_long_header_line_complete() -> None:
    """A complete but over-long header line raises 431."""
    error = request_error(b"GET / HTTP/1.1\r\nCookie: " + b"x" * 200 + b"\r\n\r\n", max_line=100)
    assert error.status == 431


def test_parse_request_too_many_headers_fails_early() -> None:
    """More than max_headers header lines raise 431 before the head ends."""
    data = b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 4
    assert parse_request(data, max_headers=4) is None
    assert parse_request(data + b"\r", max_headers=4) is None
    error = request_error(data + b"X", max_headers=4)
    assert error.status == 431
    assert "max_headers=4" in str(error)
    assert request_error(data + b"X: y\r\n", max_headers=4).status == 431


def test_parse_request_too_many_headers_complete() -> None:
    """A complete head with too many headers raises 431; exactly the limit passes."""
    head = b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * MAX_HEADERS
    assert parse_request(head + b"\r\n") is not None
    assert request_error(head + b"X: y\r\n\r\n").status == 431


def test_parse_request_head_too_big_fails_early() -> None:
    """A head longer than max_head raises 431 before its terminator arrives."""
    data = b"GET / HTTP/1.1\r\n" + (b"X-Filler: " + b"y" * 80 + b"\r\n") * 11
    assert len(data) > 1000
    error = request_error(data, max_head=1000, max_line=None, max_headers=None)
    assert error.status == 431
    assert "max_head=1000" in str(error)


def test_parse_request_head_size_boundary() -> None:
    """A head of exactly max_head bytes passes; one byte more raises 431."""
    head = b"GET / HTTP/1.1\r\nX: " + b"y" * 50 + b"\r\n\r\n"
    assert parse_request(head, max_head=len(head)) is not None
    assert request_error(head, max_head=len(head) - 1).status == 431


def test_parse_request_default_head_limit() -> None:
    """The default max_head refuses a head over 16 KiB made of legal lines."""
    data = b"GET / HTTP/1.1\r\n" + (b"Cookie: " + b"c" * 4000 + b"\r\n") * 5
    assert request_error(data).status == 431


def test_parse_request_none_disables_limits() -> None:
    """None disables each limit."""
    head = b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n" + b"X: y\r\n" * 300 + b"\r\n"
    result = parse_request(head, max_line=None, max_headers=None, max_head=None)
    assert result is not None
    assert len(result[0].headers) == 300


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\n\n",
        b"GET / HTTP/1.1\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\n",
        b"GET / HTTP/1.1\r\nHost: x\n\r\n\r\n",
    ],
)
def test_parse_request_bare_lf(data: bytes) -> None:
    """A bare LF is refused with 400, even before the head is complete."""
    error = request_error(data)
    assert error.status == 400
    assert "bare LF" in str(error)


@pytest.mark.parametrize(
    "data", [b"GET / HTTP/1.1\rHost: x", b"GET / HTTP/1.1\r\nA: \rb\r\n\r\n", b"GET /\r\r\n\r\n"]
)
def test_parse_request_bare_cr(data: bytes) -> None:
    """A bare CR is refused with 400."""
    error = request_error(data)
    assert error.status == 400
    assert "bare CR" in str(error)


def test_parse_request_obsolete_line_folding() -> None:
    """A continuation line (obs-fold) is refused with 400."""
    error = request_error(b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n")
    assert error.status == 400
    assert "folding" in str(error)
    assert request_error(b"GET / HTTP/1.1\r\n\tX: a\r\n\r\n").status == 400


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        (b"Host : x", "header name"),
        (b"Ho st: x", "header name"),
        (b": x", "header name"),
        (b"Host x", "colon"),
        (b"X: a\x00b", "control character"),
        (b"X: a\x1bb", "control character"),
    ],
)
def test_parse_request_bad_header_line(line: bytes, fragment: str) -> None:
    """Malformed header lines are refused with 400 and a reason."""
    error = request_error(b"GET / HTTP/1.1\r\n" + line + b"\r\n\r\n")
    assert error.status == 400
    assert fragment in str(error)


@pytest.mark.parametrize(
    ("line", "status"),
    [
        (b"GET / HTTP/1.0", 505),
        (b"GET / HTTP/2.0", 505),
        (b"GET / HTTP/1.1 ", 400),
        (b"GET /  HTTP/1.1", 400),
        (b"GET / http/1.1", 400),
        (b"GET / HTTP/1.10", 400),
        (b"GET /", 400),
        (b"GET", 400),
        (b"", 400),
        (b"G@T / HTTP/1.1", 400),
        (b"GET /\xe9 HTTP/1.1", 400),
        (b"GET /\x7f HTTP/1.1", 400),
        (b" GET / HTTP/1.1", 400),
    ],
)
def test_parse_request_bad_request_line(line: bytes, status: int) -> None:
    """A malformed request line gives 400; another well-formed version gives 505."""
    error = request_error(line + b"\r\nHost: x\r\n\r\n")
    assert error.status == status
    assert "\n" not in str(error)


def test_parse_request_leading_empty_line_refused() -> None:
    """An empty line before the request line is refused (strict parsing)."""
    assert request_error(b"\r\nGET / HTTP/1.1\r\n\r\n").status == 400


def test_parse_request_error_messages_are_one_line() -> None:
    """Peer data in error messages is escaped and bounded."""
    error = request_error(b"GET / HTTP/1.1\r\n" + b"X\x0b" * 500 + b": y\r\n\r\n")
    message = str(error)
    assert "\n" not in message and "\r" not in message
    assert len(message) < 200


# parse_response


def test_parse_response() -> None:
    """A 101 response parses into status, reason and headers."""
    result = parse_response(RESPONSE + b"\x81\x00")
    assert result is not None
    response, consumed = result
    assert consumed == len(RESPONSE)
    assert (response.status, response.reason) == (101, "Switching Protocols")
    assert response.headers["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_parse_response_incomplete_returns_none() -> None:
    """Every proper prefix of a response head gives None."""
    for end in range(len(RESPONSE)):
        assert parse_response(RESPONSE[:end]) is None


def test_parse_response_reason_optional() -> None:
    """A missing or empty reason phrase is accepted; spaces inside it are kept."""
    for line, reason in [
        (b"HTTP/1.1 101", ""),
        (b"HTTP/1.1 101 ", ""),
        (b"HTTP/1.1 404 Not  X", "Not  X"),
    ]:
        result = parse_response(line + b"\r\n\r\n")
        assert result is not None
        assert result[0].reason == reason


def test_parse_response_http10_error_status() -> None:
    """An HTTP/1.0 error response parses so the caller sees its status."""
    result = parse_response(b"HTTP/1.0 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
    assert result is not None
    assert result[0].status == 403


@pytest.mark.parametrize(
    "line",
    [
        b"HTTP/1.0 101 Switching Protocols",
        b"HTTP/2 101 Switching Protocols",
        b"HTTP/1.1 1O1 Switching Protocols",
        b"HTTP/1.1 99 Weird",
        b"HTTP/1.1 1010 Weird",
        b"HTTP/1.1 099 Weird",
        b"HTTP/1.1",
        b"ICY 200 OK",
    ],
)
def test_parse_response_bad_status_line(line: bytes) -> None:
    """A malformed status line raises HandshakeError 502."""
    assert response_error(line + b"\r\n\r\n").status == 502


def test_parse_response_limits_are_502() -> None:
    """Limits on responses raise 502 early: the server misbehaved."""
    assert response_error(b"HTTP/1.1 101 " + b"x" * 200, max_line=100).status == 502
    data = b"HTTP/1.1 101 OK\r\n" + b"X: y\r\n" * 5
    assert response_error(data, max_headers=4).status == 502
    assert response_error(data, max_head=40).status == 502


def test_parse_response_syntax_errors_are_502() -> None:
    """Bare LF, folding and bad names in a response raise 502."""
    assert response_error(b"HTTP/1.1 101 OK\n\n").status == 502
    assert response_error(b"HTTP/1.1 101 OK\r\nX: a\r\n b\r\n\r\n").status == 502
    assert response_error(b"HTTP/1.1 101 OK\r\nX : a\r\n\r\n").status == 502


# Property tests: peer bytes raise only HandshakeError


@settings(max_examples=400)
@given(st.binary(max_size=300))
def test_parse_request_random_bytes(data: bytes) -> None:
    """Random bytes give None, a request, or HandshakeError; nothing else."""
    try:
        result = parse_request(data, max_line=120, max_headers=8, max_head=250)
    except HandshakeError as exc:
        assert exc.status in (400, 414, 431, 505)
        assert "\n" not in str(exc)
        return
    if result is not None:
        request, consumed = result
        assert 0 < consumed <= len(data)
        _ = (request.path_only, request.query)
        assert parse_request(request.serialize()) is not None


_FRAGMENTS = st.sampled_from(
    [
        b"GET",
        b" ",
        b"/",
        b"/a?b=c",
        b"HTTP/1.1",
        b"HTTP/1.0",
        b"\r\n",
        b"\r",
        b"\n",
        b":",
        b"Host",
        b"X",
        b"\t",
        b"\x00",
        b"\xff",
        b"value",
        b"=",
        b",",
        b'"',
        b"http://[::1",
    ]
)


@settings(max_examples=400)
@given(st.lists(_FRAGMENTS, max_size=40).map(b"".join))
def test_parse_request_random_fragments(data: bytes) -> None:
    """Random HTTP-ish fragments raise only HandshakeError."""
    try:
        result = parse_request(data)
    except HandshakeError:
        return
    if result is not None:
        _ = (result[0].path_only, result[0].query)


@settings(max_examples=400)
@given(st.binary(max_size=300))
def test_parse_response_random_bytes(data: bytes) -> None:
    """Random bytes give None, a response, or HandshakeError 502; nothing else."""
    try:
        result = parse_response(data, max_line=120, max_headers=8, max_head=250)
    except HandshakeError as exc:
        assert exc.status == 502
        return
    if result is not None:
        assert 0 < result[1] <= len(data)


@settings(max_examples=300)
@given(
    st.lists(_FRAGMENTS, max_size=40).map(lambda parts: b"HTTP/1.1 101 OK\r\n" + b"".join(parts))
)
def test_parse_response_random_fragments(data: bytes) -> None:
    """Random fragments after a status line raise only HandshakeError."""
    try:
        parse_response(data)
    except HandshakeError:
        pass


@given(st.binary(max_size=200))
def test_parse_request_split_anywhere(tail: bytes) -> None:
    """Parsing never depends on where the buffer was cut."""
    data = REQUEST + tail
    for cut in range(0, len(REQUEST), 7):
        assert parse_request(data[:cut]) is None
    assert parse_request(data) == (parsed_request(REQUEST), len(REQUEST))


# ------------------------------------------------------------------------- request bodies


def test_request_body_size_reads_content_length() -> None:
    """No Content-Length means no body; one value, or identical repeats, give the size."""
    assert request_body_size(Headers()) == 0
    assert request_body_size(Headers({"Content-Length": "12"})) == 12
    assert request_body_size(Headers([("Content-Length", "7"), ("Content-Length", "7")])) == 7
    assert request_body_size(Headers({"Content-Length": "7, 7"})) == 7
    assert request_body_size(Headers({"Content-Length": "70000"}), None) == 70000


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([("Content-Length", "abc")], 400),
        ([("Content-Length", "-1")], 400),
        ([("Content-Length", "")], 400),
        ([("Content-Length", "5"), ("Content-Length", "6")], 400),
        ([("Content-Length", "1" * 19)], 400),
        ([("Transfer-Encoding", "chunked")], 411),
        ([("Transfer-Encoding", "chunked"), ("Content-Length", "3")], 411),
        ([("Content-Length", "65537")], 413),
    ],
)
def test_request_body_size_refusals(headers: list[tuple[str, str]], status: int) -> None:
    """Bad or conflicting lengths are 400, chunked bodies 411, oversized ones 413."""
    with pytest.raises(HandshakeError) as info:
        request_body_size(Headers(headers), 65536)
    assert info.value.status == status
