"""Rooms, presence events, lifecycle hooks and fan-out of App over loopback (docs/protocol.md)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from tidewire.errors import Rejected
from tidewire.realtime import SUBPROTOCOL, App, Context, HMACVerifier, Session

from .conftest import SECRET, TIMEOUT, connect, user_token


def say_app(**kwargs: Any) -> App:
    """An app whose ``say``/``dm``/``poke``/``shout`` handlers exercise every fan-out."""
    app = App(**kwargs)

    @app.on("say", fields={"room": str})
    async def say(ctx: Context) -> None:
        message = ctx.message
        await ctx.emit_room(
            message["room"],
            "said",
            exclude_self=bool(message.get("quiet")),
            by=ctx.session.key,
            seq=message.get("seq"),
        )

    @app.on("dm", fields={"to": str})
    async def dm(ctx: Context) -> None:
        await ctx.emit_user(ctx.message["to"], "dm", by=ctx.session.key)

    @app.on("poke", fields={"to": str})
    async def poke(ctx: Context) -> None:
        await ctx.emit_connection(ctx.message["to"], "poked", by=ctx.session.id)

    @app.on("shout")
    async def shout(ctx: Context) -> None:
        await ctx.broadcast("shouted", exclude_self=bool(ctx.message.get("quiet")), by=ctx.user)

    return app


# --- the hello ------------------------------------------------------------------------------


async def test_hello_has_unique_ids_and_version() -> None:
    """Every connection gets ``connection`` with a fresh id and version 1, under tidewire.v1."""
    app = App()
    async with (
        app.serve("127.0.0.1", 0) as server,
        connect(server) as a,
        connect(server) as b,
        connect(server) as c,
    ):
        hellos = [a.hello, b.hello, c.hello]
        assert all(h is not None and set(h) == {"type", "id", "version"} for h in hellos)
        assert len({a.id, b.id, c.id}) == 3
        assert a.ws.subprotocol == SUBPROTOCOL
        assert set(app.hub.sessions) == {a.id, b.id, c.id}


# --- join / leave ---------------------------------------------------------------------------


async def test_join_replies_joined_with_members_and_count() -> None:
    """``join`` answers ``joined`` with the count and the sorted members, echoing the id."""
    app = App()
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a, connect(server) as b:
        assert await a.request({"type": "join", "room": "lobby", "id": 7}) == {
            "type": "joined",
            "room": "lobby",
            "count": 1,
            "members": [a.id],
            "id": 7,
        }
        assert await b.request({"type": "join", "room": "lobby"}) == {
            "type": "joined",
            "room": "lobby",
            "count": 2,
            "members": sorted([a.id, b.id]),
        }


async def test_others_get_user_joined_but_not_the_joiner() -> None:
    """Members already in the room get ``userJoined``; the joiner itself does not."""
    app = App()
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a, connect(server) as b:
        await a.join("lobby")
        await b.join("lobby")
        assert await a.recv() == {"type": "userJoined", "room": "lobby", "user": b.id}
        await b.barrier()
        await a.barrier()


async def test_joining_twice_is_idempotent() -> None:
    """A second ``join`` of the same room answers ``joined`` again and tells nobody."""
    app = App()
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a, connect(server) as b:
        await a.join("lobby")
        await b.join("lobby")
        await a.recv()
        assert (await b.join("lobby"))["count"] == 2
        await a.barrier()


async def test_second_connection_of_a_user_is_one_member() -> None:
    """A user's second connection adds no ``userJoined``; ``userLeft`` waits for its last one."""
    app = App(auth=HMACVerifier(SECRET))
    token = user_token("alice")
    async with (
        app.serve("127.0.0.1", 0) as server,
        connect(server, token=user_token("olga")) as olga,
        connect(server, token=token) as alice1,
        connect(server, token=token) as alice2,
    ):
        assert alice1.hello is not None and alice1.hello["user"] == "alice"
        await olga.join("lobby")
        await alice1.join("lobby")
        assert await olga.recv() == {"type": "userJoined", "room": "lobby", "user": "alice"}
        assert await alice2.join("lobby") == {
            "type": "joined",
            "room": "lobby",
            "count": 2,
            "members": ["alice", "olga"],
        }
        await olga.barrier()
        await alice1.barrier()

        assert await alice1.request({"type": "leave", "room": "lobby"}) == {
            "type": "left",
            "room": "lobby",
        }
        await olga.barrier()
        await alice2.barrier()
        await alice2.request({"type": "leave", "room": "lobby"})
        assert await olga.recv() == {"type": "userLeft", "room": "lobby", "user": "alice"}


async def test_leave_replies_left_and_others_get_user_left() -> None:
    """``leave`` answers ``left`` (with the id) and the others get ``userLeft``."""
    app = App()
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a, connect(server) as b:
        await a.join("lobby")
        await b.join("lobby")
        await a.recv()
        assert await b.request({"type": "leave", "room": "lobby", "id": "x1"}) == {
            "type": "left",
            "room": "lobby",
            "id": "x1",
        }
        assert await a.recv() == {"type": "userLeft", "room": "lobby", "user": b.id}
        await b.barrier()
        assert app.hub.members("lobby") == [a.id]


async def test_disconnect_sends_user_left() -> None:
    """A client that disconnects leaves its rooms: the others get ``userLeft``."""
    app = App()
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        async with connect(server) as b:
            await a.join("lobby")
            await b.join("lobby")
            await a.recv()
            b_id = b.id
        assert await a.recv() == {"type": "userLeft", "room": "lobby", "user": b_id}
        assert app.hub.members("lobby") == [a.id]


async def test_leaving_a_room_not_joined_is_not_member() -> None:
    """``leave`` of a room the connection is not in answers ``not_member`` with the ref."""
    app = App()
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        reply = await a.request({"type": "leave", "room": "nowhere"})
        assert reply["type"] == "error" and reply["code"] == "not_member"
        assert reply["ref"] == "leave"
        reply = await a.request({"type": "leave", "room": "nowhere", "id": 5})
        assert (reply["code"], reply["ref"]) == ("not_member", 5)


@pytest.mark.parametrize(
    "room",
    ["", "x" * 256, "has space", 'quote"d', "tab\t", "ünïcode", 42, None],
    ids=["empty", "too-long", "space", "quote", "tab", "non-ascii", "number", "null"],
)
async def test_bad_room_names_are_invalid(room: Any) -> None:
    """A bad room name gets ``invalid`` with the message's ref, and joins nothing."""
    app = App()
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        reply = await a.request({"type": "join", "room": room, "id": "j"})
        assert reply["type"] == "error" and reply["code"] == "invalid", reply
        assert reply["ref"] == "j"
        reply = await a.request({"type": "join", "room": room})
        assert (reply["code"], reply["ref"]) == ("invalid", "join")
        assert app.hub.rooms == {}


async def test_longest_and_punctuated_room_names_are_valid() -> None:
    """255 characters and the allowed separators make a valid room name."""
    app = App()
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        await a.join("x" * 255)
        await a.join("a_b.c:d@e/f#g=h+i-j")


async def test_max_rooms_per_connection() -> None:
    """Past ``max_rooms_per_connection`` a join gets ``limit``; rooms already joined still work."""
    app = App(max_rooms_per_connection=2)
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        await a.join("r1")
        await a.join("r2")
        reply = await a.request({"type": "join", "room": "r3", "id": 3})
        assert (reply["type"], reply["code"], reply["ref"]) == ("error", "limit", 3)
        assert "r3" not in app.hub.rooms
        await a.join("r1")
        await a.request({"type": "leave", "room": "r1"})
        await a.join("r3")


async def test_authorizer_refuses_join_with_forbidden() -> None:
    """An authorizer returning False for ``join`` answers ``forbidden``; the room stays empty."""
    app = App()
    seen: list[tuple[str, str]] = []

    @app.authorize_with
    async def authorizer(session: Session, name: str, action: str) -> bool:
        seen.append((name, action))
        return not name.startswith("secret")

    async with app.serve("127.0.0.1", 0) as server, connect(server) as a, connect(server) as b:
        await b.join("open")
        reply = await a.request({"type": "join", "room": "secret-x", "id": 1})
        assert (reply["type"], reply["code"], reply["ref"]) == ("error", "forbidden", 1)
        assert "secret-x" not in app.hub.rooms
        await a.join("open")
        assert await b.recv() == {"type": "userJoined", "room": "open", "user": a.id}
        assert ("secret-x", "join") in seen and ("open", "join") in seen


async def test_lifecycle_hooks_are_called() -> None:
    """on_connect, on_join, on_leave and on_disconnect run with the session and room."""
    app = App()
    calls: list[tuple[str, str, Any]] = []
    disconnected = asyncio.Event()

    @app.on_connect
    async def connected(session: Session) -> None:
        calls.append(("connect", session.id, None))

    @app.on_join
    async def joined(session: Session, room: str) -> None:
        calls.append(("join", session.id, room))

    @app.on_leave
    async def left(session: Session, room: str) -> None:
        calls.append(("leave", session.id, room))

    @app.on_disconnect
    async def gone(session: Session) -> None:
        calls.append(("disconnect", session.id, sorted(session.rooms)))
        disconnected.set()

    async with app.serve("127.0.0.1", 0) as server:
        async with connect(server) as a:
            cid = a.id
            assert calls == [("connect", cid, None)]
            await a.join("r1")
            await a.join("r2")
            await a.request({"type": "leave", "room": "r1"})
        await asyncio.wait_for(disconnected.wait(), TIMEOUT)
    assert calls == [
        ("connect", cid, None),
        ("join", cid, "r1"),
        ("join", cid, "r2"),
        ("leave", cid, "r1"),
        ("leave", cid, "r2"),
        ("disconnect", cid, []),
    ]


async def test_on_connect_rejection_sends_error_then_closes_1008() -> None:
    """A connect hook raising Rejected: ``error`` (ref ``connection``), close 1008, no hello."""
    app = App()

    @app.on_connect
    async def refuse(session: Session) -> None:
        raise Rejected("no entry today")

    async with app.serve("127.0.0.1", 0) as server, connect(server, hello=False) as a:
        before = await a.expect_closed(1008)
        assert before == [
            {"type": "error", "code": "rejected", "message": "no entry today", "ref": "connection"}
        ]
        assert a.ws.close_reason == "no entry today"
        assert app.hub.sessions == {}


# --- fan-out --------------------------------------------------------------------------------


async def test_emit_room_reaches_members_only() -> None:
    """ctx.emit_room reaches every member, the sender included, and nobody outside."""
    app = say_app()
    async with (
        app.serve("127.0.0.1", 0) as server,
        connect(server) as a,
        connect(server) as b,
        connect(server) as outsider,
    ):
        await a.join("r")
        await b.join("r")
        await a.recv()
        await a.send({"type": "say", "room": "r", "seq": 1})
        expected = {"type": "said", "by": a.id, "seq": 1}
        assert await a.recv() == expected
        assert await b.recv() == expected
        await outsider.barrier()


async def test_emit_room_exclude_self() -> None:
    """``exclude_self`` leaves the sender out of its own room emit."""
    app = say_app()
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a, connect(server) as b:
        await a.join("r")
        await b.join("r")
        await a.recv()
        await a.send({"type": "say", "room": "r", "seq": 2, "quiet": True})
        assert await b.recv() == {"type": "said", "by": a.id, "seq": 2}
        await a.barrier()


async def test_emit_user_reaches_every_connection_of_the_user() -> None:
    """ctx.emit_user reaches all of the user's connections and no one else."""
    app = say_app(auth=HMACVerifier(SECRET))
    bob = user_token("bob")
    async with (
        app.serve("127.0.0.1", 0) as server,
        connect(server, token=bob) as bob1,
        connect(server, token=bob) as bob2,
        connect(server, token=user_token("carol")) as carol,
    ):
        await carol.send({"type": "dm", "to": "bob"})
        assert await bob1.recv() == {"type": "dm", "by": "carol"}
        assert await bob2.recv() == {"type": "dm", "by": "carol"}
        await carol.barrier()


async def test_emit_connection_reaches_one_connection() -> None:
    """ctx.emit_connection reaches exactly the connection named by id."""
    app = say_app()
    async with (
        app.serve("127.0.0.1", 0) as server,
        connect(server) as a,
        connect(server) as b,
        connect(server) as c,
    ):
        await a.send({"type": "poke", "to": b.id})
        assert await b.recv() == {"type": "poked", "by": a.id}
        await a.barrier()
        await c.barrier()


async def test_broadcast_reaches_every_connection() -> None:
    """ctx.broadcast reaches every connection, in rooms or not; exclude_self spares the sender."""
    app = say_app()
    async with (
        app.serve("127.0.0.1", 0) as server,
        connect(server) as a,
        connect(server) as b,
        connect(server) as c,
    ):
        await b.join("r")
        await a.send({"type": "shout"})
        for peer in (a, b, c):
            assert await peer.recv() == {"type": "shouted", "by": None}
        await a.send({"type": "shout", "quiet": True})
        for peer in (b, c):
            assert await peer.recv() == {"type": "shouted", "by": None}
        await a.barrier()


async def test_app_level_emits_from_outside_a_handler() -> None:
    """``app.emit_room``, ``emit_connection`` and ``broadcast`` work from outside handlers."""
    app = App()
    async with (
        app.serve("127.0.0.1", 0) as server,
        connect(server) as a,
        connect(server) as b,
        connect(server) as c,
    ):
        await a.join("news")
        await b.join("news")
        await a.recv()
        await app.emit_room("news", {"type": "headline", "n": 1})
        assert await a.recv() == {"type": "headline", "n": 1}
        assert await b.recv() == {"type": "headline", "n": 1}
        await c.barrier()
        await app.emit_room("news", {"type": "headline", "n": 2}, exclude=a.id)
        assert await b.recv() == {"type": "headline", "n": 2}
        await a.barrier()
        await app.emit_connection(c.id, {"type": "private"})
        assert await c.recv() == {"type": "private"}
        await app.broadcast({"type": "all"})
        for peer in (a, b, c):
            assert await peer.recv() == {"type": "all"}


async def test_many_messages_from_one_client_keep_their_order() -> None:
    """Hundreds of messages from one client reach every receiver in the order sent."""
    app = say_app(rate_limits=None)
    count = 300
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a, connect(server) as b:
        await a.join("r")
        await b.join("r")
        await a.recv()
        for seq in range(count):
            await a.send({"type": "say", "room": "r", "seq": seq})
        for peer in (a, b):
            got = [(await peer.recv())["seq"] for _ in range(count)]
            assert got == list(range(count))


async def test_on_connect_crash_closes_1011() -> None:
    """A connect hook raising a plain exception closes with 1011 before any hello."""
    app = App()

    @app.on_connect
    async def crash(session: Session) -> None:
        raise RuntimeError("hook bug")

    async with app.serve("127.0.0.1", 0) as server, connect(server, hello=False) as a:
        assert await a.expect_closed(1011) == []
        assert app.hub.sessions == {}


async def test_big_room_gets_batched_presence_counts_instead_of_events() -> None:
    """Above presence_events_max users, joins and leaves give one batched presence count."""
    app = App(presence_events_max=2, presence_interval=0.05, max_members_listed=2)
    async with app.serve("127.0.0.1", 0) as server, contextlib.AsyncExitStack() as stack:
        peers = [await stack.enter_async_context(connect(server)) for _ in range(4)]
        first = await peers[0].join("big")
        second = await peers[1].join("big")
        assert first["members"] and len(second["members"]) == 2
        assert (await peers[0].recv())["type"] == "userJoined"
        third = await peers[2].join("big")
        assert third["count"] == 3 and "members" not in third
        fourth = await peers[3].join("big")
        assert fourth["count"] == 4
        for peer in peers:
            assert await peer.recv() == {"type": "presence", "room": "big", "count": 4}
        await peers[3].ws.close()
        for peer in peers[:3]:
            assert await peer.recv() == {"type": "presence", "room": "big", "count": 3}
            await peer.barrier()
