"""The browser client (static/tidewire.js) in headless Chromium against a real App.

Each test serves an App in-process on a free port, adds a tiny test page to
its router (so ``import ... from "/tidewire.js"`` is same-origin) and drives
the client through ``page.evaluate``.  The page keeps every client event in
``window.events``; ``waitFor`` and ``failure`` are small page helpers.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from tidewire.errors import RealtimeError, RPCError
from tidewire.protocol.http import Request, Response
from tidewire.realtime import (
    App,
    HMACVerifier,
    MemoryBroker,
    RateLimit,
    RateLimits,
    sign_token,
)
from tidewire.transport import Server

pytestmark = pytest.mark.asyncio(loop_scope="session")

#: Ceiling of one test: a hung browser or server fails the test, never the run.
TEST_TIMEOUT = 15.0

SECRET = b"e2e-browser-tests-secret-0123456789"

TEST_PAGE = """<!doctype html>
<meta charset="utf-8">
<title>tidewire e2e</title>
<link rel="icon" href="data:,">
<script type="module">
import * as tw from "/tidewire.js";

const plain = (value) =>
  value instanceof Error
    ? {name: value.name, message: value.message, code: value.code, what: value.what,
       limit: value.limit}
    : value;

window.events = [];
window.make = (name, urls, options = {}) => {
  const client = new tw.TidewireClient(urls, options);
  for (const event of ["state", "open", "close", "error", "recovery_failed"]) {
    client.on(event, (value) => window.events.push({client: name, event, value: plain(value)}));
  }
  return client;
};
window.seen = (name, event) =>
  window.events.filter((e) => e.client === name && e.event === event).map((e) => e.value);
window.failure = async (promise) => {
  try {
    await promise;
    return null;
  } catch (error) {
    return plain(error);
  }
};
window.thrown = (fn) => {
  try {
    fn();
    return null;
  } catch (error) {
    return plain(error);
  }
};
window.sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
window.waitFor = async (predicate, ms = 5000) => {
  const deadline = performance.now() + ms;
  while (!predicate()) {
    if (performance.now() > deadline) throw new Error("waitFor timed out: " + predicate);
    await window.sleep(10);
  }
};
window.tw = tw;
</script>
"""


def _test_page(request: Request) -> Response:
    return Response.build(200, TEST_PAGE.encode(), content_type="text/html; charset=utf-8")


@dataclass
class Served:
    """An App listening on a free loopback port."""

    app: App
    server: Server

    @property
    def page_url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}/test.html"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}/ws"


@asynccontextmanager
async def running(app: App) -> AsyncIterator[Served]:
    """Serve ``app`` (plus the test page) until the block ends."""
    app.router.add_http("/test.html", _test_page)
    async with app.serve("127.0.0.1", 0) as server:
        yield Served(app, server)


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``predicate()`` holds; fail after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def closes(got: dict[str, Any]) -> list[tuple[int, str, str]]:
    """(code, reason, action) of the recorded close events.

    ``wasClean`` is left out: ``Session.fail`` closes without waiting for the
    client's close frame, so whether the browser calls it clean is a race.
    """
    return [(c["code"], c["reason"], c["action"]) for c in got["closes"]]


def memory_broker(app: App) -> MemoryBroker:
    """The app's in-memory broker (the tests reach into its channel histories)."""
    assert isinstance(app.broker, MemoryBroker)
    return app.broker


def epoch_of(app: App, channel: str) -> str:
    """The current epoch of ``channel`` on the server."""
    return memory_broker(app).histories[channel].epoch


def _app_with_basics(**options: Any) -> tuple[App, list[tuple[str, Any]]]:
    """An App (``options`` go to it) with a ``note`` handler recording (connection id, n),
    and RPCs ``add`` and ``drop`` (fail the connection with ``params.code``, default 4000)."""
    app = App(**options)
    notes: list[tuple[str, Any]] = []

    @app.on("note")
    async def note(ctx: Any) -> None:
        notes.append((ctx.session.id, ctx.message.get("n")))

    @app.rpc("add")
    async def add(ctx: Any, params: Any) -> Any:
        return params["a"] + params["b"]

    @app.rpc("drop")
    async def drop(ctx: Any, params: Any) -> None:
        ctx.session.fail((params or {}).get("code", 4000), "bye")

    return app, notes


# ---------------------------------------------------------------------- tests


async def test_connect_resolves_at_hello(open_page: Any) -> None:
    """connect() resolves at the `connection` hello; states go connecting → open."""
    app = App()
    async with asyncio.timeout(TEST_TIMEOUT), running(app) as srv:
        page = await open_page(srv.page_url)
        got = await page.evaluate(
            """async () => {
                const c = make("a", "/ws");
                const hello = new Promise((r) => c.on("message", (m) => r(m)));
                const info = await c.connect();
                return {info, hello: await hello, state: c.state, id: c.id,
                        states: seen("a", "state"), opens: seen("a", "open")};
            }"""
        )
        cid = got["id"]
        assert re.fullmatch(r"[0-9a-f]{12}", cid)
        assert got["hello"] == {"type": "connection", "id": cid, "version": 1}
        assert got["info"] == {"id": cid, "user": None, "url": srv.ws_url, "reconnected": False}
        assert got["opens"][0]["reconnected"] is False
        assert got["state"] == "open"
        assert got["states"] == ["connecting", "open"]
        assert cid in app.hub.sessions
        session = app.hub.sessions[cid]
        assert session.ws.subprotocol == "tidewire.v1"


async def test_join_leave_with_members(open_page: Any) -> None:
    """join() resolves with members; userJoined/userLeft arrive; errors reject with their code."""
    app = App()
    app.authorize_with(lambda session, name, action: name != "secret")
    async with asyncio.timeout(TEST_TIMEOUT), running(app) as srv:
        page = await open_page(srv.page_url)
        got = await page.evaluate(
            """async () => {
                const a = make("a", "/ws"), b = make("b", "/ws");
                await a.connect();
                await b.connect();
                const ja = await a.join("r1");
                const userJoined = a.once("userJoined");
                const jb = await b.join("r1");
                const uj = await userJoined;
                const userLeft = a.once("userLeft");
                const left = await b.leave("r1");
                const ul = await userLeft;
                return {
                    ids: [a.id, b.id], ja, jb, uj, left, ul,
                    notMember: await b.leave("r1"),
                    bad: await failure(a.join("no spaces")),
                    forbidden: await failure(a.join("secret")),
                    rooms: a.rooms,
                };
            }"""
        )
        a, b = got["ids"]
        assert got["ja"]["members"] == [a] and got["ja"]["count"] == 1
        assert got["jb"]["members"] == sorted([a, b]) and got["jb"]["count"] == 2
        assert got["uj"] == {"type": "userJoined", "room": "r1", "user": b}
        assert got["left"]["type"] == "left" and got["left"]["room"] == "r1"
        assert got["ul"] == {"type": "userLeft", "room": "r1", "user": b}
        assert got["notMember"] is None
        assert got["bad"]["code"] == "invalid"
        assert got["forbidden"]["code"] == "forbidden"
        assert got["rooms"] == ["r1"]
        assert app.hub.members("r1") == [a]


async def test_two_pages_exchange_room_messages(open_page: Any) -> None:
    """Two browser contexts join a room and get each other's application messages."""
    app = App()

    @app.on("chat", fields={"room": str, "text": str})
    async def chat(ctx: Any) -> None:
        room, text = ctx.message["room"], ctx.message["text"]
        await ctx.emit_room(room, "chat", user=ctx.session.key, text=text)

    setup = """async () => {
        const c = window.c = make("c", "/ws");
        window.chats = [];
        window.messages = [];
        c.on("chat", (m) => chats.push(m));
        c.on("message", (m) => messages.push(m.type));
        await c.connect();
        await c.join("lobby");
        return c.id;
    }"""
    async with asyncio.timeout(TEST_TIMEOUT), running(app) as srv:
        one = await open_page(srv.page_url)
        two = await open_page(srv.page_url)
        id1 = await one.evaluate(setup)
        id2 = await two.evaluate(setup)
        await one.evaluate("() => c.send({type: 'chat', room: 'lobby', text: 'hi from one'})")
        await two.evaluate("() => c.send({type: 'chat', room: 'lobby', text: 'hi from two'})")
        expected = [
            {"type": "chat", "user": id1, "text": "hi from one"},
            {"type": "chat", "user": id2, "text": "hi from two"},
        ]
        for page in (one, two):
            await page.wait_for_function("() => chats.length === 2", polling=20)
            assert await page.evaluate("() => chats") == expected
            types = await page.evaluate("() => messages")
            assert types[0] == "connection" and types.count("chat") == 2


async def test_subscribe_publish_offsets(open_page: Any) -> None:
    """Publications reach subscribers with consecutive offsets; unsubscribe stops them."""
    app = App()
    async with asyncio.timeout(TEST_TIMEOUT), running(app) as srv:
        page = await open_page(srv.page_url)
        got = await page.evaluate(
            """async () => {
                const a = window.a = make("a", "/ws"), b = make("b", "/ws");
                await a.connect();
                await b.connect();
                const got1 = [], got2 = [];
                const un1 = await a.subscribe("news", (p, i) => got1.push([i.offset, p, i.epoch]));
                const offsets = [];
                for (const n of [1, 2, 3]) offsets.push(await b.publish("news", {n}));
                await waitFor(() => got1.length === 3);
                const un2 = await a.subscribe("news", (p, i) => got2.push(i.offset));
                un1();
                offsets.push(await b.publish("news", {n: 4}));
                await waitFor(() => got2.length === 1);
                const position = a.position("news");
                window.un2 = un2;
                return {offsets, got1, got2, position, channels: a.channels,
                        bad: await failure(a.subscribe("bad name", () => {}))};
            }"""
        )
        assert got["offsets"] == [1, 2, 3, 4]
        epoch = got["position"]["epoch"]
        assert epoch == epoch_of(app, "news")
        assert got["got1"] == [[n, {"n": n}, epoch] for n in (1, 2, 3)]
        assert got["got2"] == [4]
        assert got["position"] == {"epoch": epoch, "offset": 4}
        assert got["channels"] == ["news"]
        assert got["bad"]["code"] == "invalid"
        # a server-side publication arrives too, then the last unsubscribe ends delivery
        await app.publish("news", {"n": 5})
        await page.wait_for_function("() => a.position('news').offset === 5", polling=20)
        await page.evaluate("() => un2()")
        await eventually(lambda: "news" not in app.hub.subscribers)
        assert await page.evaluate("() => a.channels") == []


async def test_rpc_both_directions(open_page: Any) -> None:
    """call() gets results and error codes (timeout, disconnected...); rpc() answers the server."""
    app, _notes = _app_with_basics()

    @app.rpc("refuse")
    async def refuse(ctx: Any, params: Any) -> None:
        raise RealtimeError("not today", "declined")

    @app.rpc("slow")
    async def slow(ctx: Any, params: Any) -> str:
        await asyncio.sleep(1.0)
        return "late"

    @app.rpc("ask")
    async def ask(ctx: Any, params: Any) -> Any:
        try:
            return {"result": await ctx.call(params["method"], params.get("params"), timeout=2)}
        except RPCError as exc:
            return {"error": exc.code, "message": str(exc)}

    async with asyncio.timeout(TEST_TIMEOUT), running(app) as srv:
        page = await open_page(srv.page_url)
        got = await page.evaluate(
            """async () => {
                const c = make("a", "/ws", {reconnect: {base: 50}});
                c.rpc("double", (p) => p.x * 2);
                c.rpc("later", async () => { await sleep(50); return "done"; });
                c.rpc("nothing", () => undefined);
                c.rpc("declines", () => {
                    throw Object.assign(new Error("the user said no"), {code: "declined"});
                });
                c.rpc("crashes", () => { throw new Error("boom"); });
                await c.connect();
                const ask = (method, params) => c.call("ask", {method, params});
                return {
                    add: await c.call("add", {a: 1, b: 2}),
                    missing: await failure(c.call("nope")),
                    refused: await failure(c.call("refuse")),
                    timeout: await failure(c.call("slow", null, {timeout: 200})),
                    double: await ask("double", {x: 21}),
                    later: await ask("later"),
                    nothing: await ask("nothing"),
                    declines: await ask("declines"),
                    crashes: await ask("crashes"),
                    unknown: await ask("client.unknown"),
                    dropped: await failure(c.call("drop")),
                    // made while reconnecting: queued, sent once open again
                    after: await c.call("add", {a: 2, b: 2}),
                };
            }"""
        )
    assert got["add"] == 3
    assert got["missing"]["code"] == "no_such_method"
    assert got["refused"]["code"] == "declined" and got["refused"]["message"] == "not today"
    assert got["timeout"]["code"] == "timeout"
    assert got["double"] == {"result": 42}
    assert got["later"] == {"result": "done"}
    assert got["nothing"] == {"result": None}
    assert got["declines"] == {"error": "declined", "message": "the user said no"}
    assert got["crashes"] == {"error": "handler_error", "message": "boom"}
    assert got["unknown"]["error"] == "no_such_method"
    assert got["dropped"]["code"] == "disconnected"
    assert got["after"] == 4


async def test_offline_queue_flushed_in_order_after_reconnect(open_page: Any) -> None:
    """Messages sent before connect and while reconnecting are delivered in order."""
    app, notes = _app_with_basics()
    async with asyncio.timeout(TEST_TIMEOUT), running(app) as srv:
        page = await open_page(srv.page_url)
        got = await page.evaluate(
            """async () => {
                const c = make("a", "/ws", {reconnect: {base: 200}});
                const sent = [];
                sent.push(c.send({type: "note", n: 0}));
                const queuedBeforeConnect = c.queued;
                await c.connect();
                sent.push(c.send({type: "note", n: 1}));
                c.on("state", (s) => {
                    if (s === "reconnecting") {
                        for (const n of [2, 3, 4, 5]) sent.push(c.send({type: "note", n}));
                    }
                });
                const dropped = await failure(c.call("drop", {code: 4100}));
                const queuedWhileDown = c.queued;
                await c.once("open");
                sent.push(c.send({type: "note", n: 6}));
                return {sent, queuedBeforeConnect, queuedWhileDown, dropped,
                        closes: seen("a", "close"), queuedAfter: c.queued};
            }"""
        )
        assert got["sent"] == [False, True, False, False, False, False, True]
        assert got["queuedBeforeConnect"] == 1
        assert got["queuedWhileDown"] == 4
        assert got["queuedAfter"] == 0
        assert got["dropped"]["code"] == "disconnected"
        assert closes(got) == [(4100, "bye", "backoff")]
        await eventually(lambda: len(notes) == 7)
        assert [n for _, n in notes] == list(range(7))
        first, second = notes[0][0], notes[-1][0]
        assert first != second
        assert [cid for cid, _ in notes] == [first] * 2 + [second] * 5


async def test_offline_queue_full_throws(open_page: Any) -> None:
    """A full offline queue throws OfflineQueueFull (messages or bytes); nothing is dropped."""
    app, notes = _app_with_basics()
    async with asyncio.timeout(TEST_TIMEOUT), running(app) as srv:
        page = await open_page(srv.page_url)
        got = await page.evaluate(
            """async () => {
                const c = make("a", "/ws", {offlineQueue: {maxMessages: 3}});
                const sent = [0, 1, 2].map((n) => c.send({type: "note", n}));
                const full = thrown(() => c.send({type: "note", n: 3}));
                const callFull = await failure(c.call("add", {a: 1, b: 1}));
                const d = make("d", "/ws", {offlineQueue: {maxBytes: 100}});
                const big = thrown(() => d.send({type: "note", text: "x".repeat(200)}));
                const small = d.send({type: "note", n: 9});
                const managed = thrown(() => c.send({type: "join", room: "r"}));
                await c.connect();
                await waitFor(() => c.queued === 0);
                return {sent, full, callFull, big, small, managed, dQueued: d.queued,
                        dBytes: d.queuedBytes};
            }"""
        )
        assert got["sent"] == [False, False, False]
        full = got["full"]
        assert full["name"] == "OfflineQueueFull" and full["code"] == "offline_queue_full"
        assert full["what"] == "messages" and full["limit"] == 3
        assert "maxMessages=3" in full["message"]
        assert got["callFull"]["name"] == "OfflineQueueFull"
        assert got["big"]["name"] == "OfflineQueueFull" and got["big"]["what"] == "bytes"
        assert got["small"] is False and got["dQueued"] == 1
        assert got["dBytes"] == len('{"type":"note","n":9}')
        assert got["managed"]["name"] == "TypeError"
        await eventually(lambda: len(notes) == 3)
        assert [n for _, n in notes] == [0, 1, 2]


async def test_buffered_amount_holds_sends_back(open_page: Any) -> None:
    """Above maxBufferedAmount, sends wait in the queue and go out in order once it drains."""
    app, notes = _app_with_basics()
    async with asyncio.timeout(TEST_TIMEOUT), running(app) as srv:
        page = await open_page(srv.page_url)
        got = await page.evaluate(
            """async () => {
                const c = make("a", "/ws", {maxBufferedAmount: 1000});
                await c.connect();
                const first = c.send({type: "note", n: 1, pad: "x".repeat(50000)});
                const second = c.send({type: "note", n: 2});
                const queued = c.queued;
                await waitFor(() => c.queued === 0);
                return {first, second, queued};
            }"""
        )
        assert got == {"first": True, "second": False, "queued": 1}
        await eventually(lambda: len(notes) == 2)
        assert [n for _, n in notes] == [1, 2]


async def test_reconnect_rejoins_and_recovers_without_gaps(open_page: Any) -> None:
    """After a 4000 close the client rejoins its rooms and gets each missed publication once."""
    app, _notes = _app_with_basics()

    @app.rpc("drop_and_publish")
    async def drop_and_publish(ctx: Any, params: Any) -> None:
        ctx.session.fail(4000, "bye")
        for n in params:  # published while the client is away
            await ctx.app.publish("news", n)

    async with asyncio.timeout(TEST_TIMEOUT), running(app) as srv:
        page = await open_page(srv.page_url)
        got = await page.evaluate(
            """async () => {
                const c = make("a", "/ws", {reconnect: {base: 100}});
                const other = make("b", "/ws");
                const got = [];
                await c.connect();
                await other.connect();
                await c.subscribe("news", (p, i) => got.push([i.offset, p]));
                await c.join("r");
                await other.join("r");
                for (const n of [1, 2, 3]) await other.publish("news", n);
                await waitFor(() => got.length === 3);
                const firstId = c.id;
                const rejoined = c.once("joined");
                const dropped = await failure(c.call("drop_and_publish", [4, 5, 6]));
                const joined = await rejoined;
                await waitFor(() => got.length === 6);
                await other.publish("news", 7);
                await waitFor(() => got.length === 7);
                // the same publication again (as from an overlapping recovery) is dropped
                const dup = {type: "publish", channel: "news", payload: 5, offset: 5};
                c._onFrame(JSON.stringify(dup));
                await other.publish("news", 8);
                await waitFor(() => got.length === 8);
                return {got, firstId, secondId: c.id, dropped, joined,
                        closes: seen("a", "close"), opens: seen("a", "open"),
                        states: seen("a", "state"), position: c.position("news")};
            }"""
        )
        assert got["got"] == [[n, n] for n in range(1, 9)]
        assert got["dropped"]["code"] == "disconnected"
        assert closes(got) == [(4000, "bye", "reconnect")]
        assert got["states"] == ["connecting", "open", "reconnecting", "open"]
        assert [o["reconnected"] for o in got["opens"]] == [False, True]
        second = got["secondId"]
        assert second != got["firstId"]
        assert got["joined"]["room"] == "r" and second in got["joined"]["members"]
        assert second in app.hub.members("r") and got["firstId"] not in app.hub.members("r")
        assert got["position"]["offset"] == 8


async def test_rate_limited_joins_are_retried(open_page: Any) -> None:
    """Joins refused with rate_limited (first joins and rejoins) are sent again later."""
    limits = RateLimits(per_type={"join": RateLimit(rate=50, burst=3)}, max_strikes=None)
    app, _notes = _app_with_basics(rate_limits=limits)
    rooms = [f"room{n}" for n in range(8)]
    async with asyncio.timeout(TEST_TIMEOUT), running(app) as srv:
        page = await open_page(srv.page_url)
        got = await page.evaluate(
            """async (rooms) => {
                const c = make("a", "/ws", {reconnect: {base: 50}});
                await c.connect();
                const first = await Promise.all(rooms.map((r) => c.join(r)));
                await failure(c.call("drop"));
                await c.once("open");
                const rejoined = [];
                c.on("joined", (m) => rejoined.push(m.room));
                await waitFor(() => rejoined.length === rooms.length);
                return {first: first.map((m) => m.room), rejoined: rejoined.sort(),
                        id: c.id, errors: seen("a", "error")};
            }""",
            rooms,
        )
        assert got["first"] == rooms
        assert got["rejoined"] == sorted(rooms)
        assert got["errors"] == []
        assert app.stats["rate_limited"] >= 10  # 5 of 8 refused at least once, twice over
        assert all(got["id"] in app.hub.members(room) for room in rooms)


async def test_recovery_failed_when_epoch_changed(open_page: Any) -> None:
    """A resubscribe into a new epoch emits recovery_failed and continues from the new position."""
    app, _notes = _app_with_basics()

    @app.rpc("reset")
    async def reset(ctx: Any, params: Any) -> None:
        ctx.session.fail(4000, "bye")
        # a fresh history, as after a restart of the in-memory broker
        memory_broker(ctx.app).histories.pop("news", None)
        await ctx.app.publish("news", "new-1")

    async with asyncio.timeout(TEST_TIMEOUT), running(app) as srv:
        page = await open_page(srv.page_url)
        got = await page.evaluate(
            """async () => {
                const c = make("a", "/ws", {reconnect: {base: 100}});
                const got = [];
                await c.connect();
                await c.subscribe("news", (p, i) => got.push([i.epoch, i.offset, p]));
                await c.publish("news", "old-1");
                await c.publish("news", "old-2");
                await waitFor(() => got.length === 2);
                const oldEpoch = c.position("news").epoch;
                const failed = c.once("recovery_failed");
                await failure(c.call("reset"));
                const info = await failed;
                await c.publish("news", "new-2");
                await waitFor(() => got.length === 3);
                return {got, oldEpoch, info, position: c.position("news")};
            }"""
        )
        new_epoch = epoch_of(app, "news")
        assert got["oldEpoch"] != new_epoch
        assert got["info"] == {"channel": "news", "epoch": new_epoch, "offset": 1}
        old = got["oldEpoch"]
        assert got["got"] == [[old, 1, "old-1"], [old, 2, "old-2"], [new_epoch, 2, "new-2"]]
        assert got["position"] == {"epoch": new_epoch, "offset": 2}


async def test_gap_in_live_offsets_is_recovered(open_page: Any) -> None:
    """A skipped live offset makes the client resubscribe with `since` and fill the gap in order."""
    app, _notes = _app_with_basics()

    @app.rpc("gap")
    async def gap(ctx: Any, params: Any) -> None:
        session = ctx.session
        ctx.app.hub.unsubscribe(session, "news")
        await ctx.app.publish("news", 2)  # kept in history, not delivered
        ctx.app.hub.subscribe(session, "news")
        await ctx.app.publish("news", 3)

    async with asyncio.timeout(TEST_TIMEOUT), running(app) as srv:
        page = await open_page(srv.page_url)
        got = await page.evaluate(
            """async () => {
                const c = make("a", "/ws");
                const got = [], replies = [];
                c.on("message", (m) => m.type === "subscribed" && replies.push(m));
                await c.connect();
                await c.subscribe("news", (p, i) => got.push([i.offset, p]));
                await c.publish("news", 1);
                await waitFor(() => got.length === 1);
                await c.call("gap");
                await waitFor(() => got.length === 3);
                await sleep(100);
                return {got, replies};
            }"""
        )
        assert got["got"] == [[1, 1], [2, 2], [3, 3]]
        recovery = got["replies"][1]
        assert recovery["recovered"] is True
        assert [p["offset"] for p in recovery["publications"]] == [2, 3]


async def test_gives_up_after_max_attempts(open_page: Any) -> None:
    """With nothing listening, connect() rejects with gave_up after reconnect.maxAttempts."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_url = f"ws://127.0.0.1:{sock.getsockname()[1]}/ws"
    async with asyncio.timeout(TEST_TIMEOUT), running(App()) as srv:
        page = await open_page(srv.page_url)
        got = await page.evaluate(
            """async (url) => {
                const c = make("a", url, {reconnect: {base: 20, maxAttempts: 2}});
                const error = await failure(c.connect());
                return {error, state: c.state, states: seen("a", "state"),
                        closes: seen("a", "close").map((c) => [c.code, c.action])};
            }""",
            dead_url,
        )
    assert got["error"]["code"] == "gave_up"
    assert "reconnect.maxAttempts=2" in got["error"]["message"]
    assert got["state"] == "closed"
    assert got["states"] == ["connecting", "reconnecting", "closed"]
    assert got["closes"] == [[1006, "backoff"]] * 3


async def test_failover_to_the_next_url(open_page: Any) -> None:
    """With several URLs, a client whose server shuts down (1001) moves on to the next one."""
    app_a, app_b = App(), App()
    async with asyncio.timeout(TEST_TIMEOUT), running(app_a) as a, running(app_b) as b:
        page = await open_page(a.page_url)
        first = await page.evaluate(
            """async (urls) => {
                const c = window.c = make("a", urls, {reconnect: {base: 50}});
                const info = await c.connect();
                await c.join("r");
                window.reopened = c.once("open");
                return info;
            }""",
            [a.ws_url, b.ws_url],
        )
        assert first["url"] == a.ws_url
        await a.server.shutdown(timeout=2, spread=0)
        second = await page.evaluate("() => reopened")
        assert second["url"] == b.ws_url and second["reconnected"] is True
        await eventually(lambda: app_b.hub.members("r") == [second["id"]])
        closes = await page.evaluate("() => seen('a', 'close')")
        assert closes[0]["code"] == 1001 and closes[0]["action"] == "reconnect"


async def test_stop_on_45xx_and_on_close(open_page: Any) -> None:
    """A 45xx close stops the client for good; so does close(), failing pending calls."""
    app, _notes = _app_with_basics()

    @app.rpc("slow")
    async def slow(ctx: Any, params: Any) -> None:
        await asyncio.sleep(1.0)

    async with asyncio.timeout(TEST_TIMEOUT), running(app) as srv:
        page = await open_page(srv.page_url)
        got = await page.evaluate(
            """async () => {
                const c = make("a", "/ws", {reconnect: {base: 20}});
                await c.connect();
                const dropped = await failure(c.call("drop", {code: 4500}));
                await sleep(300);
                const d = make("d", "/ws");
                await d.connect();
                const pending = failure(d.call("slow"));
                d.close();
                return {dropped, state: c.state, states: seen("a", "state"),
                        closes: seen("a", "close"), dPending: await pending, dState: d.state,
                        dCloses: seen("d", "close"), dRooms: d.rooms};
            }"""
        )
        assert got["dropped"]["code"] == "disconnected"
        assert got["state"] == "closed"
        assert got["states"] == ["connecting", "open", "closed"]
        assert closes(got) == [(4500, "bye", "stop")]
        assert got["dPending"]["code"] == "closed"
        assert got["dState"] == "closed"
        assert got["dCloses"] == [{"code": 1000, "reason": "", "action": "stop", "wasClean": True}]
        assert got["dRooms"] == []
        await eventually(lambda: not app.hub.sessions)
        await asyncio.sleep(0.2)
        assert not app.hub.sessions
        assert app.stats["connections"] == 2  # neither client came back


def _token_app() -> tuple[App, list[float]]:
    """An App requiring HMAC tokens, with ``/token?ttl=S`` issuing them for alice."""
    app = App(auth=HMACVerifier(SECRET))
    issued: list[float] = []

    def token(request: Request) -> Response:
        ttl = float(request.query.get("ttl", ["3600"])[0])
        issued.append(ttl)
        return Response.build(200, sign_token(SECRET, "alice", ttl=ttl).encode())

    app.router.add_http("/token", token)

    @app.rpc("whoami")
    async def whoami(ctx: Any, params: Any) -> Any:
        return ctx.user

    @app.rpc("expire")
    async def expire(ctx: Any, params: Any) -> None:
        ctx.session.fail(4200, "token expired")

    return app, issued


async def test_reauth_with_token_function_on_4200(open_page: Any) -> None:
    """A 4200 close makes the client fetch a fresh token and reconnect; a bad token stops it."""
    app, issued = _token_app()
    async with asyncio.timeout(TEST_TIMEOUT), running(app) as srv:
        page = await open_page(srv.page_url)
        got = await page.evaluate(
            """async () => {
                let calls = 0;
                const token = async () => { calls++; return (await fetch("/token")).text(); };
                const c = make("a", "/ws", {token, reconnect: {base: 100}});
                c.send({type: "ping"});  // queued until authenticated
                const first = await c.connect();
                await c.join("r");
                const me = await c.call("whoami");
                const dropped = await failure(c.call("expire"));
                const second = await c.once("open");
                const me2 = await c.call("whoami");
                const bad = make("bad", "/ws", {token: "not-a-token"});
                const refused = await failure(bad.connect());
                return {first, second, me, me2, calls, dropped, closes: seen("a", "close"),
                        refused, badCloses: seen("bad", "close"), badErrors: seen("bad", "error"),
                        badState: bad.state};
            }"""
        )
        assert got["first"]["user"] == "alice" and got["me"] == "alice" and got["me2"] == "alice"
        assert got["calls"] == 2 and len(issued) == 2
        assert got["dropped"]["code"] == "disconnected"
        assert closes(got) == [(4200, "token expired", "reauth")]
        assert got["second"]["id"] != got["first"]["id"] and got["second"]["reconnected"]
        assert app.hub.members("r") == ["alice"]
        assert got["refused"]["code"] == "closed"
        assert got["badCloses"][0]["code"] == 1008 and got["badCloses"][0]["action"] == "stop"
        assert got["badErrors"][0]["code"] == "unauthorized"
        assert got["badState"] == "closed"


async def test_token_refreshed_before_expiry(open_page: Any) -> None:
    """A token function is called again before the token expires; the connection stays up."""
    app, issued = _token_app()
    async with asyncio.timeout(TEST_TIMEOUT), running(app) as srv:
        page = await open_page(srv.page_url)
        got = await page.evaluate(
            """async () => {
                let calls = 0;
                const token = async () => {
                    calls++;
                    return (await fetch(calls === 1 ? "/token?ttl=1" : "/token")).text();
                };
                const c = make("a", "/ws", {token});
                const first = await c.connect();
                await waitFor(() => calls === 2);
                await sleep(800);  // past the first token's expiry
                return {first, id: c.id, state: c.state, calls, closes: seen("a", "close"),
                        me: await c.call("whoami")};
            }"""
        )
        assert got["calls"] == 2 and issued == [1.0, 3600.0]
        assert got["id"] == got["first"]["id"] and got["state"] == "open"
        assert got["closes"] == [] and got["me"] == "alice"


async def test_missing_pong_detects_a_dead_server(open_page: Any) -> None:
    """With the server not reading, the unanswered ping ends the socket; the client reconnects."""
    app, _notes = _app_with_basics()
    stalled: list[Any] = []

    @app.rpc("stall")
    async def stall(ctx: Any, params: Any) -> str:
        ws = ctx.session.ws
        ws.transport.pause_reading()
        stalled.append(ws)
        return "stalled"

    async with asyncio.timeout(TEST_TIMEOUT), running(app) as srv:
        page = await open_page(srv.page_url)
        try:
            got = await page.evaluate(
                """async () => {
                    const c = make("a", "/ws",
                                   {pingInterval: 150, pongTimeout: 300, reconnect: {base: 50}});
                    const first = await c.connect();
                    const answer = await c.call("stall");
                    const t0 = performance.now();
                    const closed = await c.once("close");
                    const elapsed = performance.now() - t0;
                    const second = await c.once("open");
                    return {first, answer, closed, elapsed, second,
                            sum: await c.call("add", {a: 20, b: 22})};
                }"""
            )
        finally:
            for ws in stalled:  # let the server read the client's close
                ws.transport.resume_reading()
        assert got["answer"] == "stalled"
        assert got["closed"] == {
            "code": 1006,
            "reason": "no pong within 300 ms",
            "action": "backoff",
            "wasClean": False,
        }
        assert got["elapsed"] < 2000
        assert got["second"]["id"] != got["first"]["id"]
        assert got["sum"] == 42
