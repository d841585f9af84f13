"""Tests for docs/protocol.md and docs/schema/v1: schemas, examples and a live App agree."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from tidewire.errors import RealtimeError
from tidewire.protocol.close import CloseAction, CloseCode, action_for
from tidewire.realtime import App, AppOptions, HMACVerifier, RateLimit, RateLimits, sign_token
from tidewire.realtime.limits import (
    DEFAULT_MAX_STRIKES,
    DEFAULT_PER_CONNECTION,
    DEFAULT_STRIKE_WINDOW,
)
from tidewire.realtime.wire import CLIENT_TYPES, SERVER_TYPES

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "protocol.md"
SCHEMA_DIR = ROOT / "docs" / "schema" / "v1"
BASE_URI = "https://tidewire.invalid/schema/v1/"
DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
#: Reserved for the server but never sent in v1, so they have no schema.
NEVER_SENT: frozenset[str] = frozenset()
SERVER_SENT = SERVER_TYPES - NEVER_SENT
SECRET = b"0123456789abcdef0123456789abcdef"
#: Seconds any single receive may take before the test fails instead of hanging.
TIMEOUT = 5.0

SCHEMAS: dict[str, dict[str, Any]] = {
    path.name.removesuffix(".json"): json.loads(path.read_text(encoding="utf-8"))
    for path in sorted(SCHEMA_DIR.glob("*.json"))
}
REGISTRY: Registry = Registry().with_resources(
    (schema["$id"], Resource.from_contents(schema)) for schema in SCHEMAS.values()
)
MESSAGE_SCHEMAS = sorted(name for name in SCHEMAS if name != "envelope")

_EXAMPLE = re.compile(r"<!-- schema: ([\w.]+) -->\n```json\n(.*?)\n```", re.DOTALL)
EXAMPLES: list[tuple[str, Any]] = [
    (name, json.loads(body)) for name, body in _EXAMPLE.findall(DOC.read_text(encoding="utf-8"))
]


def validator(name: str) -> Draft202012Validator:
    """A validator for the schema file ``name`` (without .json), refs resolved locally."""
    return Draft202012Validator(SCHEMAS[name], registry=REGISTRY)


def direction_validator(direction: str) -> Draft202012Validator:
    """A validator for ``envelope.json#/$defs/<direction>``."""
    return Draft202012Validator(
        {"$ref": f"{BASE_URI}envelope.json#/$defs/{direction}"}, registry=REGISTRY
    )


def schema_for(direction: str, message: dict[str, Any]) -> str:
    """The schema name a message of ``direction`` ("client"/"server") must match."""
    kind = message.get("type")
    reserved = CLIENT_TYPES if direction == "client" else SERVER_SENT
    return f"{direction}.{kind}" if kind in reserved else f"{direction}.app"


def assert_valid(name: str, message: Any) -> None:
    """Fail with the first schema error when ``message`` does not match schema ``name``."""
    errors = sorted(validator(name).iter_errors(message), key=str)
    assert not errors, f"{name} refuses {message!r}: {errors[0].message}"


def first_example(name: str) -> Any:
    """The first example protocol.md shows for schema ``name``."""
    return next(example for example_name, example in EXAMPLES if example_name == name)


# ------------------------------------------------------------------ static checks


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_schema_is_valid_draft_2020_12(name: str) -> None:
    """Each schema file is a valid draft 2020-12 schema whose $id names its file."""
    schema = SCHEMAS[name]
    assert schema["$schema"] == DRAFT_2020_12
    assert schema["$id"] == f"{BASE_URI}{name}.json"
    Draft202012Validator.check_schema(schema)


def test_schema_files_cover_the_reserved_types() -> None:
    """There is one schema per reserved type and direction, plus the two application schemas."""
    client = {name for name in SCHEMAS if name.startswith("client.")}
    server = {name for name in SCHEMAS if name.startswith("server.")}
    assert client == {f"client.{kind}" for kind in CLIENT_TYPES} | {"client.app"}
    assert server == {f"server.{kind}" for kind in SERVER_SENT} | {"server.app"}
    assert set(SCHEMAS) == client | server | {"envelope"}


def test_application_schemas_exclude_exactly_the_reserved_types() -> None:
    """client.app and server.app refuse exactly the types wire.py reserves for each direction."""
    client_not = SCHEMAS["client.app"]["properties"]["type"]["not"]["enum"]
    server_not = SCHEMAS["server.app"]["properties"]["type"]["not"]["enum"]
    assert set(client_not) == CLIENT_TYPES | SERVER_TYPES
    assert set(server_not) == SERVER_TYPES


def test_doc_shows_an_example_for_every_schema() -> None:
    """protocol.md has at least one marked example per message schema, and no unknown marker."""
    assert {name for name, _ in EXAMPLES} == set(MESSAGE_SCHEMAS)


@pytest.mark.parametrize(
    ("name", "example"), EXAMPLES, ids=[f"{i}-{name}" for i, (name, _) in enumerate(EXAMPLES)]
)
def test_doc_example_matches_its_schema(name: str, example: Any) -> None:
    """Each example in protocol.md validates against its schema and its direction's envelope."""
    assert_valid(name, example)
    direction = name.split(".")[0]
    assert schema_for(direction, example) == name
    assert direction_validator(direction).is_valid(example)
    assert validator("envelope").is_valid(example)


def test_doc_links_point_to_existing_schemas() -> None:
    """Every schema/v1/... link in protocol.md names a file that exists."""
    links = re.findall(r"\]\((schema/v1/[^)]*)\)", DOC.read_text(encoding="utf-8"))
    assert links
    for link in links:
        assert (DOC.parent / link).exists(), link


@pytest.mark.parametrize("name", MESSAGE_SCHEMAS)
def test_schema_rejects_a_message_missing_a_required_field(name: str) -> None:
    """Dropping any required field (or changing a reserved type) makes the example invalid."""
    example = first_example(name)
    check = validator(name)
    required = SCHEMAS[name]["required"]
    assert "type" in required
    for field in required:
        broken = copy.deepcopy(example)
        del broken[field]
        assert not check.is_valid(broken), f"{name} accepts {broken!r} without {field!r}"
    if not name.endswith(".app"):
        assert not check.is_valid({**example, "type": "not-this-type"})


def test_envelope_routes_each_direction_by_type() -> None:
    """The envelope refuses server-only types from clients and wrong shapes in both directions."""
    client, server = direction_validator("client"), direction_validator("server")
    assert not client.is_valid({"type": "joined", "room": "r", "count": 1, "members": []})
    assert not client.is_valid({"type": "join", "room": "no spaces"})
    assert not client.is_valid({"type": "chat", "id": True})
    assert not client.is_valid({"type": "", "id": 1})
    assert not client.is_valid(["type", "ping"])
    assert not server.is_valid({"type": "presence"})
    assert not server.is_valid({"type": "pong", "extra": 1})
    assert not server.is_valid({"type": "rpc_result", "id": 1})
    assert client.is_valid({"type": "chat", "anything": [1, {"goes": None}]})
    assert server.is_valid({"type": "chat", "anything": [1, {"goes": None}]})


def test_client_rpc_result_needs_exactly_one_outcome() -> None:
    """client.rpc_result takes a result or an error, not both; "error": null counts as absent."""
    check = validator("client.rpc_result")
    assert check.is_valid({"type": "rpc_result", "id": 1, "result": None})
    assert check.is_valid({"type": "rpc_result", "id": 1, "result": 2, "error": None})
    assert not check.is_valid({"type": "rpc_result", "id": 1, "error": None})
    assert not check.is_valid(
        {"type": "rpc_result", "id": 1, "result": 2, "error": {"code": "x", "message": "y"}}
    )
    assert not check.is_valid({"type": "rpc_result", "id": 1, "error": {"code": "x"}})


def test_close_code_table_matches_close_py() -> None:
    """The close-code table lists every CloseCode with its name and action_for()."""
    rows = re.findall(
        r"^\| (\d{4}) \| (\w+) \| .* \| `(\w+)` \|$", DOC.read_text(encoding="utf-8"), re.M
    )
    table = {int(code): (name, action) for code, name, action in rows}
    assert set(table) == {int(code) for code in CloseCode}
    for code in CloseCode:
        assert table[code] == (code.name, action_for(code).value)
    assert {action for _, action in table.values()} == {a.value for a in CloseAction}


def test_limits_table_matches_app_options() -> None:
    """The limits table gives every AppOptions field with its default, and the rate defaults."""
    text = DOC.read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", text, re.M))
    for field in dataclasses.fields(AppOptions):
        assert rows.get(field.name) == str(field.default), field.name
    rate, burst = DEFAULT_PER_CONNECTION.rate, DEFAULT_PER_CONNECTION.burst
    assert f"{rate:g}/s, burst {burst:g}" in text
    assert f"{DEFAULT_MAX_STRIKES} within {DEFAULT_STRIKE_WINDOW} s" in text


# -------------------------------------------------------------------- live server


class Peer:
    """A websockets client whose messages, both ways, are checked against the schemas."""

    def __init__(self, ws: Any, seen: set[str]) -> None:
        """Wrap an open websockets connection; received server schemas go into ``seen``."""
        self.ws = ws
        self.seen = seen

    async def send(self, message: dict[str, Any]) -> None:
        """Check ``message`` against the client schemas, then send it as JSON text."""
        assert_valid(schema_for("client", message), message)
        assert direction_validator("client").is_valid(message)
        await self.ws.send(json.dumps(message))

    async def send_raw(self, data: str | bytes) -> None:
        """Send a frame as is (for messages the protocol refuses)."""
        await self.ws.send(data)

    async def recv(self) -> dict[str, Any]:
        """The next server message, checked against the schema of its type."""
        message = json.loads(await asyncio.wait_for(self.ws.recv(), TIMEOUT))
        name = schema_for("server", message)
        assert_valid(name, message)
        assert direction_validator("server").is_valid(message)
        self.seen.add(name)
        return message

    async def expect(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Receive the next message and check its type and the given fields."""
        message = await self.recv()
        assert message["type"] == kind, message
        for key, value in fields.items():
            assert message.get(key) == value, (key, message)
        return message

    async def closed(self) -> int:
        """Wait for the server to close the connection; the close code it sent."""
        with pytest.raises(websockets.ConnectionClosed) as info:
            await self.recv()
        assert info.value.rcvd is not None
        return info.value.rcvd.code


def make_app(**options: Any) -> App:
    """An App with HMAC auth (optional unless asked) and handlers the scenarios use."""
    options.setdefault("auth_required", False)
    app = App(
        auth=HMACVerifier(SECRET),
        rate_limits=RateLimits(per_type={"spam": RateLimit(rate=1.0, burst=1.0)}),
        **options,
    )

    @app.on("chat", fields={"room": str, "text": str})
    async def chat(ctx: Any) -> None:
        room, text = ctx.message["room"], ctx.message["text"]
        await ctx.emit_room(room, "chat", user=ctx.session.key, text=text)

    @app.on("echo")
    async def echo(ctx: Any) -> dict[str, Any]:
        return {"type": "echoed", "text": ctx.message.get("text")}

    @app.on("spam")
    async def spam(ctx: Any) -> None:
        return None

    @app.rpc("add")
    async def add(ctx: Any, params: Any) -> Any:
        return params["a"] + params["b"]

    @app.rpc("refuse")
    async def refuse(ctx: Any, params: Any) -> Any:
        raise RealtimeError("not today", "my_code")

    @app.rpc("ask")
    async def ask(ctx: Any, params: Any) -> Any:
        return await ctx.call("client.confirm", params)

    return app


class Live:
    """A running App and a way to open checked client connections to it."""

    def __init__(self, url: str, stack: contextlib.AsyncExitStack) -> None:
        """Clients connect to ``url``; their connections close with ``stack``."""
        self.url = url
        self.stack = stack
        self.seen: set[str] = set()

    async def connect(
        self, query: str = "", subprotocols: list[str] | None = None, **kwargs: Any
    ) -> Peer:
        """Open a client connection (offering tidewire.v1 unless told otherwise)."""
        offer = ["tidewire.v1"] if subprotocols is None else subprotocols
        ws = await self.stack.enter_async_context(
            websockets.connect(self.url + query, subprotocols=offer or None, **kwargs)
        )
        return Peer(ws, self.seen)


@contextlib.asynccontextmanager
async def running(**options: Any) -> AsyncIterator[Live]:
    """Serve ``make_app(**options)`` on a free port for the duration of the block."""
    app = make_app(**options)
    async with app.serve("127.0.0.1", 0) as server, contextlib.AsyncExitStack() as stack:
        yield Live(f"ws://127.0.0.1:{server.port}/ws", stack)


async def test_live_server_messages_match_their_schemas() -> None:
    """A scenario drawing every server message type from a real App validates end to end."""
    async with running() as live:
        a = await live.connect()
        assert a.ws.subprotocol == "tidewire.v1"
        a_id = (await a.expect("connection", version=1))["id"]
        b = await live.connect(subprotocols=[])
        b_id = (await b.expect("connection", version=1))["id"]

        # ping / pong, with and without id
        await a.send({"type": "ping", "id": 1})
        await a.expect("pong", id=1)
        await a.send({"type": "ping"})
        assert "id" not in await a.expect("pong")

        # rooms: joined, userJoined, application messages
        await a.send({"type": "join", "room": "lobby", "id": "j1"})
        await a.expect("joined", room="lobby", count=1, members=[a_id], id="j1")
        await b.send({"type": "join", "room": "lobby"})
        joined = await b.expect("joined", room="lobby", count=2)
        assert joined["members"] == sorted([a_id, b_id]) and "id" not in joined
        await a.expect("userJoined", room="lobby", user=b_id)
        await a.send({"type": "chat", "room": "lobby", "text": "hello"})
        await a.expect("chat", user=a_id, text="hello")
        await b.expect("chat", user=a_id, text="hello")
        await a.send({"type": "echo", "text": "hi", "id": 9})
        await a.expect("echoed", text="hi", id=9)

        # client -> server RPC: results, built-ins and errors
        await a.send({"type": "rpc", "id": 7, "method": "add", "params": {"a": 1, "b": 2}})
        await a.expect("rpc_result", id=7, result=3)
        await a.send({"type": "rpc", "id": 10, "method": "presence", "params": {"room": "lobby"}})
        members = (await a.expect("rpc_result", id=10))["result"]
        assert [m["user"] for m in members] == sorted([a_id, b_id])
        await a.send({"type": "rpc", "id": "rooms-1", "method": "rooms.list"})
        await a.expect("rpc_result", id="rooms-1", result=[{"room": "lobby", "members": 2}])
        for call_id, method, params, code in [
            (11, "nope", None, "no_such_method"),
            (12, "refuse", None, "my_code"),
            (13, "presence", {}, "invalid_params"),
        ]:
            await a.send({"type": "rpc", "id": call_id, "method": method, "params": params})
            assert (await a.expect("rpc_result", id=call_id))["error"]["code"] == code

        # channels: subscribed, publish, published, unsubscribed, recovery
        await a.send({"type": "subscribe", "channel": "news", "id": 4})
        sub = await a.expect("subscribed", channel="news", offset=0, id=4)
        assert "recovered" not in sub and "publications" not in sub
        epoch = sub["epoch"]
        await b.send({"type": "publish", "channel": "news", "payload": {"n": 1}, "id": "p1"})
        await b.expect("published", channel="news", offset=1, id="p1")
        await a.expect("publish", channel="news", payload={"n": 1}, offset=1)
        await b.send({"type": "publish", "channel": "news", "payload": None})
        await a.expect("publish", channel="news", payload=None, offset=2)
        await a.send({"type": "unsubscribe", "channel": "news", "id": 5})
        await a.expect("unsubscribed", channel="news", id=5)
        await b.send({"type": "publish", "channel": "news", "payload": "missed", "id": "p3"})
        await b.expect("published", channel="news", offset=3, id="p3")
        since = {"epoch": epoch, "offset": 2}
        await a.send({"type": "subscribe", "channel": "news", "since": since})
        recovered = await a.expect("subscribed", epoch=epoch, offset=3, recovered=True)
        assert [p["payload"] for p in recovered["publications"]] == ["missed"]
        since = {"epoch": "not-the-epoch", "offset": 1}
        await a.send({"type": "subscribe", "channel": "news", "since": since, "id": 6})
        await a.expect("subscribed", epoch=epoch, offset=3, recovered=False, publications=[])

        # errors
        for raw, code, ref in [
            ("not json", "bad_json", None),
            (b"\x00binary", "bad_json", None),
            ("[1]", "bad_envelope", None),
            ('{"type": "x", "id": true}', "bad_envelope", "x"),
            ('{"type": "joined", "id": 3}', "bad_envelope", 3),
            ('{"type": "join"}', "invalid", "join"),
            ('{"type": "publish", "channel": "news", "id": "np"}', "invalid", "np"),
            ('{"type": "chat", "room": "lobby"}', "invalid", "chat"),
            ('{"type": "nope", "id": 14}', "unknown_type", 14),
            ('{"type": "leave", "room": "elsewhere"}', "not_member", "leave"),
        ]:
            await a.send_raw(raw)
            error = await a.expect("error", code=code)
            assert error.get("ref") == ref, error
        await a.send({"type": "spam", "id": 15})
        await a.send({"type": "spam", "id": 16})
        limited = await a.expect("error", code="rate_limited", ref=16)
        assert limited["retry_after"] > 0

        # auth message, then server -> client RPC (result and error)
        c = await live.connect()
        await c.expect("connection")
        token = sign_token(SECRET, "carol", ttl=600)
        await c.send({"type": "auth", "token": token, "id": "auth-1"})
        auth = await c.expect("auth", status="success", user="carol", id="auth-1")
        assert auth["expires_at"] > 0
        await c.send({"type": "rpc", "id": "q1", "method": "ask", "params": {"question": "ok?"}})
        call = await c.expect("rpc", method="client.confirm", params={"question": "ok?"})
        await c.send({"type": "rpc_result", "id": call["id"], "result": {"confirmed": True}})
        await c.expect("rpc_result", id="q1", result={"confirmed": True})
        await c.send({"type": "rpc", "id": "q2", "method": "ask"})
        call = await c.expect("rpc", method="client.confirm")
        assert "params" not in call
        error = {"code": "declined", "message": "the user said no"}
        await c.send({"type": "rpc_result", "id": call["id"], "error": error})
        await c.expect("rpc_result", id="q2", error=error)

        # presence: userJoined / userLeft per user, left, disconnect
        await c.send({"type": "join", "room": "lobby"})
        await c.expect("joined", count=3)
        await a.expect("userJoined", user="carol")
        await b.expect("userJoined", user="carol")
        await c.send({"type": "leave", "room": "lobby", "id": "l1"})
        await c.expect("left", room="lobby", id="l1")
        await a.expect("userLeft", room="lobby", user="carol")
        await b.expect("userLeft", room="lobby", user="carol")
        await b.ws.close()
        await a.expect("userLeft", room="lobby", user=b_id)
        await a.send({"type": "leave", "room": "lobby"})
        await a.expect("left", room="lobby")

        # a big room (more users than presence_events_max): batched presence counts
        async with running(presence_events_max=1, presence_interval=0.05) as big:
            d, e = await big.connect(), await big.connect()
            await d.expect("connection")
            await e.expect("connection")
            await d.send({"type": "join", "room": "big"})
            await d.expect("joined", room="big", count=1)
            await e.send({"type": "join", "room": "big"})
            await e.expect("joined", room="big", count=2)
            await d.expect("presence", room="big", count=2)
            live.seen |= big.seen

        # opt-in batching: two answers within the interval arrive as one batch
        async with running(batch_interval=0.05) as batched:
            f = await batched.connect()
            await f.expect("connection")
            await f.send({"type": "ping", "id": 1})
            await f.send({"type": "ping", "id": 2})
            batch = await f.expect("batch")
            assert batch["messages"] == [{"type": "pong", "id": 1}, {"type": "pong", "id": 2}]
            live.seen |= batched.seen

        expected = {f"server.{kind}" for kind in SERVER_SENT} | {"server.app"}
        assert live.seen == expected


async def test_live_handshake_tokens_and_refusals() -> None:
    """Header, subprotocol and query tokens authenticate; bad tokens get an error and 1008."""
    async with running() as live:
        token = sign_token(SECRET, "dave", ttl=600)
        header = await live.connect(additional_headers={"Authorization": f"Bearer {token}"})
        await header.expect("connection", user="dave")
        offered = await live.connect(subprotocols=["tidewire.v1", f"token.{token}"])
        assert offered.ws.subprotocol == "tidewire.v1"
        await offered.expect("connection", user="dave")
        query = await live.connect(query=f"?token={token}")
        await query.expect("connection", user="dave")

        expired = sign_token(SECRET, "dave", ttl=1, now=0)
        refused = await live.connect(additional_headers={"Authorization": f"Bearer {expired}"})
        await refused.expect("error", code="token_expired", ref="connection")
        assert await refused.closed() == CloseCode.TOKEN_EXPIRED

        bad = await live.connect()
        await bad.expect("connection")
        await bad.send({"type": "auth", "token": "not-a-token"})
        await bad.expect("error", code="unauthorized", ref="auth")
        assert await bad.closed() == CloseCode.POLICY_VIOLATION

        other = await live.connect(query=f"?token={token}")
        await other.expect("connection", user="dave")
        await other.send({"type": "auth", "token": sign_token(SECRET, "eve"), "id": 1})
        await other.expect("error", code="unauthorized", ref=1)
        assert await other.closed() == CloseCode.POLICY_VIOLATION


async def test_live_auth_required_gates_messages_until_the_deadline() -> None:
    """Before auth only ping/auth pass; other messages get unauthorized; 4201 at the deadline."""
    async with running(auth_required=True, auth_timeout=1.0) as live:
        peer = await live.connect()
        hello = await peer.expect("connection")
        assert "user" not in hello
        await peer.send({"type": "join", "room": "lobby"})
        await peer.expect("error", code="unauthorized", ref="join")
        await peer.send({"type": "rpc", "id": 1, "method": "rooms.list"})
        await peer.expect("error", code="unauthorized", ref=1)
        await peer.send({"type": "ping", "id": 2})
        await peer.expect("pong", id=2)
        code = await peer.closed()
        assert code == CloseCode.AUTH_TIMEOUT
        assert action_for(code) is CloseAction.REAUTH

        late = await live.connect()
        await late.expect("connection")
        await late.send({"type": "auth", "token": sign_token(SECRET, "frank", ttl=None)})
        auth = await late.expect("auth", user="frank")
        assert "expires_at" not in auth
        await late.send({"type": "join", "room": "lobby", "id": 3})
        await late.expect("joined", members=["frank"], id=3)


async def test_live_expiry_and_idle_close_codes() -> None:
    """Credentials that expire close with 4200; a silent connection closes with 4101."""
    async with running() as live:
        token = sign_token(SECRET, "gina", ttl=1.0)
        expiring = await live.connect(additional_headers={"Authorization": f"Bearer {token}"})
        await expiring.expect("connection", user="gina")
        code = await expiring.closed()
        assert code == CloseCode.TOKEN_EXPIRED
        assert action_for(code) is CloseAction.REAUTH
    async with running(idle_timeout=0.4) as live:
        idle = await live.connect()
        await idle.expect("connection")
        code = await idle.closed()
        assert code == CloseCode.IDLE
        assert action_for(code) is CloseAction.BACKOFF
