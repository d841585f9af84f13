"""The sans-I/O opening handshake (RFC 6455 section 4), tidewire to tidewire and to websockets.

The interop half drives the sans-I/O ``ClientProtocol``/``ServerProtocol`` of websockets 17.4,
a real foreign implementation, against tidewire's in memory: handshake in both directions,
text, binary, fragmented and compressed messages, pings and close codes.
"""

from __future__ import annotations

import base64
import hashlib
import struct

import pytest
from websockets.client import ClientProtocol as WSClient
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    ServerPerMessageDeflateFactory,
)
from websockets.frames import Frame as WSFrame
from websockets.frames import Opcode as WSOpcode
from websockets.http11 import Request as WSRequest
from websockets.protocol import State as WSState
from websockets.server import ServerProtocol as WSServer
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from tidewire.errors import HandshakeError, InvalidState, InvalidStatus
from tidewire.protocol.client import ClientProtocol
from tidewire.protocol.connection import State
from tidewire.protocol.deflate import ClientDeflateFactory, PerMessageDeflate, ServerDeflateFactory
from tidewire.protocol.events import CloseReceived, Message, Ping, Pong
from tidewire.protocol.http import Response
from tidewire.protocol.server import ServerProtocol

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 section 1.3
MASK = b"\x37\xfa\x21\x3d"


def accept_value(key: str) -> str:
    """Sec-WebSocket-Accept for ``key`` (section 4.2.2 step 5.4), computed independently."""
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def masked_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """A short masked frame, as a client sends it."""
    head = bytes([(0x80 if fin else 0) | opcode, 0x80 | len(payload)])
    return head + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


def request_bytes(*headers: str, version: str | None = "13", key: str | None = KEY) -> bytes:
    """An opening request with the usual headers plus ``headers``."""
    lines = [
        "GET /chat HTTP/1.1",
        "Host: server.example.com",
        "Upgrade: websocket",
        "Connection: Upgrade",
    ]
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    if version is not None:
        lines.append(f"Sec-WebSocket-Version: {version}")
    lines.extend(headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def handshake(
    client: ClientProtocol, server: ServerProtocol
) -> tuple[ClientProtocol, ServerProtocol]:
    """Run the opening handshake between a tidewire client and server in memory."""
    client.connect()
    server.receive_data(client.data_to_send())
    assert server.request is not None
    server.accept()
    client.receive_data(server.data_to_send())
    assert client.handshake_error is None, client.handshake_error
    assert client.state is State.OPEN and server.state is State.OPEN
    return client, server


def parse_response_head(data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lowercased names) and rest of a serialized response."""
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, rest


# --------------------------------------------------------------------- tidewire <-> tidewire


def test_full_handshake_and_messages() -> None:
    """connect() -> ServerProtocol -> accept() -> 101 -> client; then messages both ways."""
    client = ClientProtocol("server.example.com", "/chat?room=1")
    server = ServerProtocol()
    client.connect()
    request = client.data_to_send()
    assert request.startswith(b"GET /chat?room=1 HTTP/1.1\r\n")
    server.receive_data(request)
    assert server.state is State.CONNECTING
    assert server.request is not None
    assert server.request.path == "/chat?room=1"
    assert server.request.headers["Host"] == "server.example.com"
    response = server.accept()
    assert response.status == 101
    data = server.data_to_send()
    status, headers, rest = parse_response_head(data)
    assert status == 101 and rest == b""
    assert headers["upgrade"].lower() == "websocket"
    assert "upgrade" in headers["connection"].lower()
    key = server.request.headers["Sec-WebSocket-Key"]
    assert headers["sec-websocket-accept"] == accept_value(key)
    client.receive_data(data)
    assert client.state is State.OPEN and server.state is State.OPEN
    assert client.response is not None and client.response.status == 101

    client.send_text("hello server")
    client.send_binary(b"\x00\x01")
    server.receive_data(client.data_to_send())
    assert server.events_received() == [Message("hello server"), Message(b"\x00\x01")]
    server.send_text("hello client")
    client.receive_data(server.data_to_send())
    assert client.events_received() == [Message("hello client")]

    client.send_close(1000, "bye")
    server.receive_data(client.data_to_send())
    assert server.events_received() == [CloseReceived(1000, "bye")]
    assert server.close_expected()
    client.receive_data(server.data_to_send())
    assert client.events_received() == [CloseReceived(1000, "bye")]
    assert client.close_expected()


def test_rfc_example_key_and_browser_headers() -> None:
    """The section 1.3 key gives the RFC's accept value; header names and tokens are caseless."""
    server = ServerProtocol()
    server.receive_data(
        b"GET /chat HTTP/1.1\r\nhost: server.example.com\r\nupgrade: WebSocket\r\n"
        b"connection: keep-alive, Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"sec-websocket-version: 13\r\norigin: http://example.com\r\n\r\n"
    )
    server.accept()
    status, headers, _ = parse_response_head(server.data_to_send())
    assert status == 101
    assert headers["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_request_head_in_pieces() -> None:
    """The request head may arrive a few bytes at a time."""
    client = ClientProtocol("h", "/")
    server = ServerProtocol()
    client.connect()
    data = client.data_to_send()
    for i in range(0, len(data), 7):
        assert server.request is None
        server.receive_data(data[i : i + 7])
    assert server.request is not None
    server.accept()
    client.receive_data(server.data_to_send())
    assert client.state is State.OPEN


def test_pipelined_frame_parsed_after_accept() -> None:
    """A frame right after the request head waits for accept() and is then parsed."""
    server = ServerProtocol()
    server.receive_data(request_bytes() + masked_frame(0x1, b"early")[:5])
    server.receive_data(masked_frame(0x1, b"early")[5:] + masked_frame(0x9, b"p"))
    assert server.request is not None
    assert server.events_received() == []
    server.accept()
    assert server.events_received() == [Message("early"), Ping(b"p")]
    status, _, rest = parse_response_head(server.data_to_send())
    assert status == 101
    assert rest[:2] == b"\x8a\x01"  # the pong follows the 101


def test_pipelined_compressed_frame_parsed_after_accept() -> None:
    """A compressed frame pipelined after the request is inflated once deflate is agreed."""
    client = ClientProtocol("h", "/", extensions=[ClientDeflateFactory()])
    server = ServerProtocol(extensions=[ServerDeflateFactory()])
    client.connect()
    head = client.data_to_send()
    # The client may not send frames before the 101 in general, but a pipelining one could;
    # build its compressed frame with the extension it is about to get.
    ext = PerMessageDeflate(
        is_server_side=False, server_max_window_bits=12, client_max_window_bits=12
    )
    payload = ext.deflate(b"compressed " * 10)
    frame = (
        bytes([0xC1, 0x80 | len(payload)])
        + MASK
        + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
    )
    server.receive_data(head + frame)
    server.accept()
    assert server.events_received() == [Message("compressed " * 10)]


def test_frames_after_101_in_same_chunk() -> None:
    """Frames that arrive together with the 101 are parsed by the client."""
    client = ClientProtocol("h", "/")
    server = ServerProtocol()
    client.connect()
    server.receive_data(client.data_to_send())
    server.accept()
    server.send_text("welcome")
    server.send_ping(b"x")
    client.receive_data(server.data_to_send())
    assert client.state is State.OPEN
    assert client.events_received() == [Message("welcome"), Ping(b"x")]


def test_client_requires_connect_output() -> None:
    """connect() queues a request with the mandatory handshake headers (4.1)."""
    client = ClientProtocol("server.example.com:8080", "/chat", origin="http://example.com")
    request = client.connect()
    assert request.method == "GET"
    data = client.data_to_send()
    text = data.decode()
    assert text.endswith("\r\n\r\n")
    for header in (
        "Host: server.example.com:8080",
        "Upgrade: websocket",
        "Sec-WebSocket-Version: 13",
        "Origin: http://example.com",
    ):
        assert header in text
    key = request.headers["Sec-WebSocket-Key"]
    assert len(base64.b64decode(key)) == 16


@pytest.mark.parametrize(
    ("offered", "supported", "chosen"),
    [
        (["chat", "superchat"], ["superchat", "chat"], "superchat"),
        (["chat", "superchat"], ["chat"], "chat"),
        (["chat"], ["other"], None),
        ([], ["chat"], None),
        (["chat"], [], None),
    ],
)
def test_subprotocol_negotiation(
    offered: list[str], supported: list[str], chosen: str | None
) -> None:
    """The server picks its most preferred subprotocol among the client's (4.2.2)."""
    client, server = handshake(
        ClientProtocol("h", "/", subprotocols=offered), ServerProtocol(subprotocols=supported)
    )
    assert server.subprotocol == chosen
    assert client.subprotocol == chosen
    assert server.response is not None
    assert server.response.headers.get("Sec-WebSocket-Protocol") == chosen


def test_custom_select_subprotocol() -> None:
    """select_subprotocol overrides the default choice."""
    client, server = handshake(
        ClientProtocol("h", "/", subprotocols=["a", "b"]),
        ServerProtocol(select_subprotocol=lambda offered: offered[-1]),
    )
    assert client.subprotocol == server.subprotocol == "b"


def test_client_rejects_unoffered_subprotocol() -> None:
    """A server choosing a subprotocol the client did not offer fails the handshake."""
    client = ClientProtocol("h", "/", subprotocols=["chat"])
    request = client.connect()
    key = request.headers["Sec-WebSocket-Key"]
    client.data_to_send()
    client.receive_data(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        + f"Sec-WebSocket-Accept: {accept_value(key)}\r\n".encode()
        + b"Sec-WebSocket-Protocol: other\r\n\r\n"
    )
    assert isinstance(client.handshake_error, HandshakeError)
    assert "other" in str(client.handshake_error)
    assert client.state is State.CLOSED


def test_deflate_negotiation() -> None:
    """Both sides agree on permessage-deflate and exchange compressed messages."""
    client, server = handshake(
        ClientProtocol("h", "/", extensions=[ClientDeflateFactory()]),
        ServerProtocol(extensions=[ServerDeflateFactory()]),
    )
    assert server.response is not None
    assert "permessage-deflate" in (server.response.headers.get("Sec-WebSocket-Extensions") or "")
    assert [ext.name for ext in client.extensions] == ["permessage-deflate"]
    assert [ext.name for ext in server.extensions] == ["permessage-deflate"]
    text = "compress me " * 50
    client.send_text(text)
    wire = client.data_to_send()
    assert wire[0] & 0x40  # RSV1
    assert len(wire) < len(text)
    server.receive_data(wire)
    assert server.events_received() == [Message(text)]
    server.send_text(text)
    wire = server.data_to_send()
    assert wire[0] & 0x40
    client.receive_data(wire)
    assert client.events_received() == [Message(text)]


@pytest.mark.parametrize("side", ["client", "server"])
def test_deflate_not_negotiated_when_one_side_lacks_it(side: str) -> None:
    """Without an offer or without a server factory no extension is in use."""
    client = ClientProtocol(
        "h", "/", extensions=[] if side == "client" else [ClientDeflateFactory()]
    )
    server = ServerProtocol(extensions=[] if side == "server" else [ServerDeflateFactory()])
    handshake(client, server)
    assert client.extensions == [] and server.extensions == []
    assert server.response is not None
    assert "Sec-WebSocket-Extensions" not in server.response.headers
    client.send_text("x" * 100)
    wire = client.data_to_send()
    assert not wire[0] & 0x40
    server.receive_data(wire)
    assert server.events_received() == [Message("x" * 100)]


# ---------------------------------------------------------------------------- bad requests


def reject_status(server: ServerProtocol) -> tuple[int, dict[str, str]]:
    """The status and headers of the response a server queued, checking it is final."""
    status, headers, _ = parse_response_head(server.data_to_send())
    assert server.response is not None and server.response.status == status
    assert server.close_expected()
    assert server.state is State.CLOSED
    assert headers.get("connection", "").lower().find("close") >= 0
    return status, headers


def test_missing_key_is_400() -> None:
    """A request without Sec-WebSocket-Key is answered 400 (4.2.1)."""
    server = ServerProtocol()
    server.receive_data(request_bytes(key=None))
    with pytest.raises(HandshakeError) as info:
        server.accept()
    assert info.value.status == 400
    assert "Sec-WebSocket-Key" in str(info.value)
    assert server.handshake_error is info.value
    status, _ = reject_status(server)
    assert status == 400


@pytest.mark.parametrize("version", ["8", "12", "14", None])
def test_wrong_version_is_426(version: str | None) -> None:
    """A version other than 13 is answered 426 with Sec-WebSocket-Version: 13 (4.2.2)."""
    server = ServerProtocol()
    server.receive_data(request_bytes(version=version))
    with pytest.raises(HandshakeError) as info:
        server.accept()
    assert info.value.status == 426
    status, headers = reject_status(server)
    assert status == 426
    assert headers["sec-websocket-version"] == "13"


def test_too_many_headers_is_431() -> None:
    """More headers than max_headers is answered 431 while still receiving the head."""
    server = ServerProtocol(max_headers=20)
    extra = [f"X-Filler-{i}: {i}" for i in range(30)]
    server.receive_data(request_bytes(*extra))
    assert isinstance(server.handshake_error, HandshakeError)
    assert server.handshake_error.status == 431
    assert server.request is None
    status, _ = reject_status(server)
    assert status == 431


def test_too_many_headers_default_limit() -> None:
    """The default limit (128 headers) also fires before the head is complete."""
    server = ServerProtocol()
    head = request_bytes(*[f"X-F{i}: {i}" for i in range(200)])
    server.receive_data(head[: len(head) - 10])
    assert server.handshake_error is not None and server.handshake_error.status == 431
    reject_status(server)


def test_bad_request_ignores_further_input() -> None:
    """After a rejected handshake, frames and more bytes are ignored."""
    server = ServerProtocol()
    server.receive_data(b"NOT HTTP AT ALL\r\n\r\n")
    assert server.handshake_error is not None and server.handshake_error.status == 400
    reject_status(server)
    server.receive_data(masked_frame(0x1, b"x"))
    assert server.events_received() == []
    assert server.data_to_send() == b""


def test_accept_without_request() -> None:
    """accept() before a request head arrived is a HandshakeError."""
    server = ServerProtocol()
    with pytest.raises(HandshakeError):
        server.accept()


def accepted_server() -> ServerProtocol:
    """A server that accepted a valid request, its 101 already taken."""
    server = ServerProtocol()
    server.receive_data(request_bytes())
    server.accept()
    server.data_to_send()
    return server


def test_accept_twice_is_invalid_state() -> None:
    """A second accept() would queue a second 101: InvalidState, nothing queued."""
    server = accepted_server()
    with pytest.raises(InvalidState):
        server.accept()
    assert server.data_to_send() == b""
    assert server.state is State.OPEN


def test_accept_after_peer_close_is_invalid_state() -> None:
    """accept() after the closing handshake started does not reopen the connection."""
    server = accepted_server()
    server.receive_data(masked_frame(0x8, b"\x03\xe8"))
    server.data_to_send()
    with pytest.raises(InvalidState):
        server.accept()
    assert server.state is State.CLOSING
    assert server.data_to_send() == b""


def test_accept_after_error_response_is_invalid_state() -> None:
    """After send_response (or a rejection) the request cannot be accepted any more."""
    server = ServerProtocol()
    server.receive_data(request_bytes())
    server.send_response(Response.build(403, b"no\n"))
    server.data_to_send()
    with pytest.raises(InvalidState):
        server.accept()
    assert server.state is State.CLOSED
    assert server.data_to_send() == b""


def test_send_response_after_accept_is_invalid_state() -> None:
    """An HTTP response cannot follow the 101 into the WebSocket stream."""
    server = accepted_server()
    with pytest.raises(InvalidState):
        server.send_response(Response.build(500))
    assert server.data_to_send() == b""
    assert server.state is State.OPEN


def test_close_before_accept_is_invalid_state() -> None:
    """send_close before accept() would put a close frame ahead of the 101."""
    server = ServerProtocol()
    server.receive_data(request_bytes())
    with pytest.raises(InvalidState):
        server.send_close(1001)
    assert server.data_to_send() == b""
    server.accept()
    status, _, rest = parse_response_head(server.data_to_send())
    assert (status, rest) == (101, b"")


def test_fail_before_accept() -> None:
    """fail() during the handshake sends nothing and ends the connection."""
    server = ServerProtocol()
    server.receive_data(request_bytes())
    server.fail(1011, "shutting down")
    assert server.data_to_send() == b""
    assert server.state is State.CLOSED
    assert server.close_expected()
    with pytest.raises(InvalidState):
        server.accept()


def test_send_response_for_plain_http() -> None:
    """send_response queues a non-101 answer and the connection is done."""
    server = ServerProtocol()
    server.receive_data(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert server.request is not None and server.request.path == "/health"
    server.send_response(Response.build(200, b"ok\n"))
    status, headers, body = parse_response_head(server.data_to_send())
    assert (status, body) == (200, b"ok\n")
    assert headers["content-length"] == "3"
    assert server.close_expected()


def test_plain_request_body_completes_the_request() -> None:
    """A Content-Length body, fed in pieces, completes the request; extra bytes are dropped."""
    server = ServerProtocol()
    server.receive_data(b"POST /api HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello")
    assert server.request is None and server.data_to_send() == b""
    server.receive_data(b" world")
    assert server.request is not None
    assert (server.request.method, server.request.body) == ("POST", b"hello world")
    server.receive_data(b"GET / HTTP/1.1\r\n\r\n")  # pipelined: ignored, the answer closes
    assert server.request.body == b"hello world" and server.handshake_error is None


def test_body_in_the_same_chunk_as_the_head() -> None:
    """A body that arrives with its head completes the request at once."""
    server = ServerProtocol()
    server.receive_data(b"POST /a HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
    assert server.request is not None and server.request.body == b"{}"


def test_oversized_body_is_413_before_it_is_buffered() -> None:
    """A Content-Length over max_body answers 413 naming the limit; later bytes are ignored."""
    server = ServerProtocol(max_body=10)
    server.receive_data(b"POST /a HTTP/1.1\r\nContent-Length: 11\r\n\r\n")
    status, _headers, body = parse_response_head(server.data_to_send())
    assert status == 413 and b"max_body_size=10" in body
    assert server.handshake_error is not None and server.request is None
    server.receive_data(b"x" * 11)
    assert server.request is None and server.close_expected()


def test_chunked_body_is_411() -> None:
    """Transfer-Encoding bodies are not read: 411 Length Required."""
    server = ServerProtocol()
    server.receive_data(b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert parse_response_head(server.data_to_send())[0] == 411


def test_expect_100_continue_gets_an_interim_response() -> None:
    """Expect: 100-continue queues "100 Continue" until the body arrives."""
    server = ServerProtocol()
    server.receive_data(b"POST /a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
    assert server.data_to_send() == b"HTTP/1.1 100 Continue\r\n\r\n"
    server.receive_data(b"abc")
    assert server.request is not None and server.request.body == b"abc"


def test_upgrade_request_content_length_is_not_a_body() -> None:
    """An opening handshake never waits for a body: bytes after it stay frames."""
    server = ServerProtocol()
    server.receive_data(request_bytes("Content-Length: 5"))
    assert server.request is not None and server.request.body == b""


# ---------------------------------------------------------------------------- bad responses


def test_wrong_accept_names_header() -> None:
    """A 101 with the wrong Sec-WebSocket-Accept sets handshake_error naming the header."""
    client = ClientProtocol("h", "/")
    client.connect()
    client.data_to_send()
    client.receive_data(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        + f"Sec-WebSocket-Accept: {accept_value('AAAAAAAAAAAAAAAAAAAAAA==')}\r\n\r\n".encode()
        + b"\x81\x02hi"
    )
    assert isinstance(client.handshake_error, HandshakeError)
    assert "Sec-WebSocket-Accept" in str(client.handshake_error)
    assert client.state is State.CLOSED
    assert client.close_expected()
    assert client.events_received() == []
    with pytest.raises(InvalidState):
        client.send_text("x")


def test_non_101_response() -> None:
    """A server answering 403 makes the client record InvalidStatus with the response."""
    client = ClientProtocol("h", "/")
    client.connect()
    client.data_to_send()
    client.receive_data(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
    error = client.handshake_error
    assert isinstance(error, InvalidStatus)
    assert error.status == 403
    assert error.response.status == 403
    assert client.state is State.CLOSED


def test_response_in_pieces() -> None:
    """The 101 may arrive one byte at a time."""
    client = ClientProtocol("h", "/")
    server = ServerProtocol()
    client.connect()
    server.receive_data(client.data_to_send())
    server.accept()
    data = server.data_to_send()
    for i in range(len(data)):
        assert client.state is State.CONNECTING
        client.receive_data(data[i : i + 1])
    assert client.state is State.OPEN


# ------------------------------------------------------------------ interop with websockets


def ws_out(proto: WSClient | WSServer) -> bytes:
    """Everything websockets wants to send, joined (an EOF marker b"" adds nothing)."""
    return b"".join(proto.data_to_send())


def ws_frames(proto: WSClient | WSServer) -> list[WSFrame]:
    """The frames websockets received (skipping handshake events)."""
    return [e for e in proto.events_received() if isinstance(e, WSFrame)]


def open_tidewire_client(deflate: bool) -> tuple[ClientProtocol, WSServer]:
    """A tidewire client connected to a websockets server, in memory."""
    client = ClientProtocol(
        "example.com",
        "/ws",
        subprotocols=["chat"],
        extensions=[ClientDeflateFactory()] if deflate else [],
    )
    server = WSServer(
        subprotocols=[Subprotocol("chat")],
        extensions=[ServerPerMessageDeflateFactory()] if deflate else None,
    )
    client.connect()
    server.receive_data(client.data_to_send())
    (request,) = server.events_received()
    assert isinstance(request, WSRequest)
    response = server.accept(request)
    assert response.status_code == 101, response.body
    server.send_response(response)
    assert server.state is WSState.OPEN
    client.receive_data(ws_out(server))
    assert client.handshake_error is None, client.handshake_error
    assert client.state is State.OPEN
    assert client.subprotocol == "chat"
    assert [e.name for e in client.extensions] == (["permessage-deflate"] if deflate else [])
    return client, server


def open_tidewire_server(deflate: bool) -> tuple[ServerProtocol, WSClient]:
    """A websockets client connected to a tidewire server, in memory."""
    client = WSClient(
        parse_uri("ws://example.com/ws"),
        subprotocols=[Subprotocol("chat")],
        extensions=[ClientPerMessageDeflateFactory()] if deflate else None,
    )
    server = ServerProtocol(
        subprotocols=["chat"], extensions=[ServerDeflateFactory()] if deflate else []
    )
    client.send_request(client.connect())
    server.receive_data(ws_out(client))
    assert server.request is not None
    server.accept()
    client.receive_data(server.data_to_send())
    assert client.state is WSState.OPEN, client.handshake_exc
    assert client.handshake_exc is None
    assert client.subprotocol == "chat"
    assert [e.name for e in client.extensions] == (["permessage-deflate"] if deflate else [])
    assert server.state is State.OPEN
    return server, client


Pair = tuple[ClientProtocol | ServerProtocol, WSClient | WSServer]


def open_pair(role: str, deflate: bool) -> Pair:
    """tidewire in ``role`` against websockets in the other role."""
    if role == "client":
        return open_tidewire_client(deflate)
    return open_tidewire_server(deflate)


ROLES = pytest.mark.parametrize("role", ["client", "server"], ids=["tw-client", "tw-server"])
DEFLATE = pytest.mark.parametrize("deflate", [False, True], ids=["plain", "deflate"])


@ROLES
@DEFLATE
def test_interop_handshake(role: str, deflate: bool) -> None:
    """tidewire and websockets complete the opening handshake in both roles."""
    ours, theirs = open_pair(role, deflate)
    assert ours.state is State.OPEN
    assert theirs.state is WSState.OPEN


@ROLES
@DEFLATE
@pytest.mark.parametrize("size", [0, 5, 125, 126, 65535, 65536, 100_000])
def test_interop_messages(role: str, deflate: bool, size: int) -> None:
    """Text and binary messages of every header size go both ways intact."""
    ours, theirs = open_pair(role, deflate)
    text = ("héllo wörld " * (size // 12 + 1))[:size]
    blob = bytes(i * 7 & 0xFF for i in range(size))
    ours.send_text(text)
    ours.send_binary(blob)
    theirs.receive_data(ours.data_to_send())
    frames = ws_frames(theirs)
    assert [(f.opcode, f.fin, bytes(f.data)) for f in frames] == [
        (WSOpcode.TEXT, True, text.encode()),
        (WSOpcode.BINARY, True, blob),
    ]
    theirs.send_text(text.encode())
    theirs.send_binary(blob)
    ours.receive_data(ws_out(theirs))
    assert ours.failure is None, ours.failure
    assert ours.events_received() == [Message(text), Message(blob)]


@ROLES
@DEFLATE
def test_interop_fragmented(role: str, deflate: bool) -> None:
    """Fragmented messages go both ways; pings may sit between fragments."""
    ours, theirs = open_pair(role, deflate)
    ours.send_text("frag" * 20, fin=False)
    ours.send_ping(b"mid")
    ours.send_continuation("ment" * 20, fin=False)
    ours.send_continuation("ed!", fin=True)
    theirs.receive_data(ours.data_to_send())
    frames = ws_frames(theirs)
    assert [f.opcode for f in frames] == [
        WSOpcode.TEXT,
        WSOpcode.PING,
        WSOpcode.CONT,
        WSOpcode.CONT,
    ]
    data = [bytes(f.data) for f in frames if f.opcode is not WSOpcode.PING]
    assert b"".join(data) == ("frag" * 20 + "ment" * 20 + "ed!").encode()
    assert [f.fin for f in frames] == [False, True, False, True]
    # websockets answered the ping; the pong comes before its fragments.
    theirs.send_binary(b"\x01" * 50, fin=False)
    theirs.send_continuation(b"\x02" * 50, fin=False)
    theirs.send_ping(b"ws-ping")
    theirs.send_continuation(b"\x03", fin=True)
    ours.receive_data(ws_out(theirs))
    assert ours.failure is None, ours.failure
    assert ours.events_received() == [
        Pong(b"mid"),
        Ping(b"ws-ping"),
        Message(b"\x01" * 50 + b"\x02" * 50 + b"\x03"),
    ]
    theirs.receive_data(ours.data_to_send())
    assert [(f.opcode, bytes(f.data)) for f in ws_frames(theirs)] == [(WSOpcode.PONG, b"ws-ping")]


@ROLES
def test_interop_compression_on_the_wire(role: str) -> None:
    """With deflate both implementations really compress (RSV1 set, fewer bytes)."""
    ours, theirs = open_pair(role, deflate=True)
    text = "the same words again and again " * 40
    ours.send_text(text)
    wire = ours.data_to_send()
    assert wire[0] & 0x40 and len(wire) < len(text) // 4
    theirs.receive_data(wire)
    assert [bytes(f.data) for f in ws_frames(theirs)] == [text.encode()]
    theirs.send_text(text.encode())
    wire = ws_out(theirs)
    assert wire[0] & 0x40 and len(wire) < len(text) // 4
    ours.receive_data(wire)
    assert ours.events_received() == [Message(text)]
    # Several messages in a row exercise the shared (context takeover) window.
    for i in range(20):
        ours.send_text(f"{text} {i}")
        theirs.send_text(f"{text} {i}".encode())
    theirs.receive_data(ours.data_to_send())
    ours.receive_data(ws_out(theirs))
    assert [bytes(f.data) for f in ws_frames(theirs)] == [f"{text} {i}".encode() for i in range(20)]
    assert ours.events_received() == [Message(f"{text} {i}") for i in range(20)]


@ROLES
@pytest.mark.parametrize(("code", "reason"), [(1000, ""), (1001, "going away"), (4000, "app é")])
def test_interop_close_initiated_by_tidewire(role: str, code: int, reason: str) -> None:
    """tidewire's close frame is understood and echoed by websockets."""
    ours, theirs = open_pair(role, deflate=False)
    ours.send_close(code, reason)
    theirs.receive_data(ours.data_to_send())
    (close,) = ws_frames(theirs)
    assert close.opcode is WSOpcode.CLOSE
    assert theirs.close_rcvd is not None
    assert (theirs.close_rcvd.code, theirs.close_rcvd.reason) == (code, reason)
    ours.receive_data(ws_out(theirs))
    assert ours.events_received() == [CloseReceived(code, reason)]
    assert ours.close_expected()
    assert (ours.close_code, ours.close_reason) == (code, reason)


@ROLES
@pytest.mark.parametrize(("code", "reason"), [(None, ""), (1000, "done"), (3001, "x" * 123)])
def test_interop_close_initiated_by_websockets(role: str, code: int | None, reason: str) -> None:
    """websockets' close frame is reported and echoed by tidewire (1005 when empty)."""
    ours, theirs = open_pair(role, deflate=False)
    theirs.send_close(code, reason)
    ours.receive_data(ws_out(theirs))
    expected = 1005 if code is None else code
    assert ours.events_received() == [CloseReceived(expected, reason)]
    assert ours.close_expected()
    theirs.receive_data(ours.data_to_send())
    assert theirs.close_rcvd is not None
    assert theirs.close_rcvd.code == expected
    assert theirs.close_rcvd.reason == reason
    ours.receive_eof()
    assert ours.state is State.CLOSED


@ROLES
def test_interop_invalid_utf8_from_websockets(role: str) -> None:
    """websockets sending invalid UTF-8 text gets a 1007 close from tidewire."""
    ours, theirs = open_pair(role, deflate=False)
    theirs.send_text(b"valid")
    theirs.send_text(b"bad \xff")
    ours.receive_data(ws_out(theirs))
    assert ours.events_received() == [Message("valid")]
    assert ours.failure is not None and ours.failure.close_code == 1007
    theirs.receive_data(ours.data_to_send())
    assert theirs.close_rcvd is not None and theirs.close_rcvd.code == 1007


@ROLES
def test_interop_too_big_from_websockets(role: str) -> None:
    """A message over tidewire's limit gets 1009, which websockets receives."""
    ours, theirs = open_pair(role, deflate=True)
    ours.max_message_size = 1000
    theirs.send_binary(bytes(5000))
    ours.receive_data(ws_out(theirs))
    assert ours.failure is not None and ours.failure.close_code == 1009
    theirs.receive_data(ours.data_to_send())
    assert theirs.close_rcvd is not None and theirs.close_rcvd.code == 1009


@ROLES
def test_interop_tidewire_fail_code(role: str) -> None:
    """A connection tidewire fails reaches websockets with the chosen code and reason."""
    ours, theirs = open_pair(role, deflate=False)
    ours.fail(1011, "internal trouble")
    theirs.receive_data(ours.data_to_send())
    assert theirs.close_rcvd is not None
    assert (theirs.close_rcvd.code, theirs.close_rcvd.reason) == (1011, "internal trouble")


@ROLES
def test_interop_ping_pong(role: str) -> None:
    """A tidewire ping is answered by websockets and the pong reported; both stay open."""
    ours, theirs = open_pair(role, deflate=False)
    ours.send_ping(b"hb")
    theirs.receive_data(ours.data_to_send())
    assert [(f.opcode, bytes(f.data)) for f in ws_frames(theirs)] == [(WSOpcode.PING, b"hb")]
    ours.receive_data(ws_out(theirs))
    assert ours.events_received() == [Pong(b"hb")]
    assert theirs.state is WSState.OPEN
    assert not theirs.close_expected()


def test_websockets_client_against_bad_tidewire_request() -> None:
    """tidewire's 426 answer is parsed by websockets as a failed handshake."""
    server = ServerProtocol()
    server.receive_data(request_bytes(version="8"))
    with pytest.raises(HandshakeError):
        server.accept()
    client = WSClient(parse_uri("ws://server.example.com/chat"))
    client.send_request(client.connect())
    client.data_to_send()
    client.receive_data(server.data_to_send())
    assert client.handshake_exc is not None
    assert "426" in str(client.handshake_exc)


def test_close_payload_helper_matches_wire() -> None:
    """struct-packed close codes are what tidewire puts on the wire (sanity of the helpers)."""
    client, server = handshake(ClientProtocol("h", "/"), ServerProtocol())
    server.send_close(4001, "r")
    assert server.data_to_send() == b"\x88\x03" + struct.pack("!H", 4001) + b"r"


def test_bytes_before_accept_are_bounded() -> None:
    """A client flooding before the 101 is cut off at max_head instead of buffered forever."""
    client = ClientProtocol("h", "/")
    server = ServerProtocol(max_head=4096)
    server.receive_data(client.connect().serialize())
    assert server.request is not None
    server.receive_data(b"\x00" * 4000)
    assert server.handshake_error is None
    server.receive_data(b"\x00" * 4000)
    assert server.handshake_error is not None and server.handshake_error.status == 400
    assert "max_head=4096" in str(server.handshake_error)
