"""Authentication over loopback: token routes, the auth message, deadlines, expiry, JWT."""

from __future__ import annotations

import time
from typing import Any

import jwt

from tidewire.realtime import App, Context, HMACVerifier, JWTVerifier, sign_token

from .conftest import SECRET, connect, next_disconnect, track_disconnects, user_token

JWT_KEY = b"k" * 32


def auth_app(**kwargs: Any) -> App:
    """An app that requires HMAC tokens and has a ``whoami`` handler."""
    app = App(auth=HMACVerifier(SECRET), **kwargs)

    @app.on("whoami")
    async def whoami(ctx: Context) -> dict[str, Any]:
        assert ctx.identity is not None
        return {"type": "me", "user": ctx.user, "role": ctx.identity.claims.get("role")}

    return app


async def test_token_in_authorization_header() -> None:
    """``Authorization: Bearer`` authenticates at connect: the hello names the user."""
    app = auth_app()
    token = sign_token(SECRET, "alice", claims={"role": "admin"})
    async with app.serve("127.0.0.1", 0) as server, connect(server, token=token) as a:
        assert a.hello is not None and a.hello["user"] == "alice"
        assert await a.request({"type": "whoami"}) == {
            "type": "me",
            "user": "alice",
            "role": "admin",
        }
        assert a.session(app).user == "alice"


async def test_token_in_subprotocol_offer() -> None:
    """A ``token.<T>`` offer authenticates; the server selects tidewire.v1, never the token."""
    app = auth_app()
    async with (
        app.serve("127.0.0.1", 0) as server,
        connect(server, token=user_token("bob"), via="subprotocol") as a,
    ):
        assert a.ws.subprotocol == "tidewire.v1"
        assert a.hello is not None and a.hello["user"] == "bob"
        assert (await a.request({"type": "whoami"}))["user"] == "bob"


async def test_token_in_query() -> None:
    """``?token=`` authenticates too."""
    app = auth_app()
    async with (
        app.serve("127.0.0.1", 0) as server,
        connect(server, token=user_token("carol"), via="query") as a,
    ):
        assert a.hello is not None and a.hello["user"] == "carol"


async def test_auth_message_succeeds() -> None:
    """An ``auth`` message answers ``auth``/``success`` with the user (and its id, expiry)."""
    app = auth_app()
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        assert a.hello is not None and "user" not in a.hello
        token = user_token("dave", ttl=None)
        assert await a.request({"type": "auth", "token": token}) == {
            "type": "auth",
            "status": "success",
            "user": "dave",
        }
        timed = sign_token(SECRET, "dave", ttl=60, now=1000.0 + time.time())
        reply = await a.request({"type": "auth", "token": timed, "id": 5})
        assert (reply["status"], reply["id"]) == ("success", 5)
        assert reply["expires_at"] > time.time() + 1000
        assert (await a.request({"type": "whoami"}))["user"] == "dave"


async def test_bad_token_in_auth_message_closes_1008() -> None:
    """A bad token in ``auth`` answers ``unauthorized`` then closes with 1008."""
    app = auth_app()
    forged = sign_token(b"another-secret-of-32-bytes-length", "mallory")
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        await a.send({"type": "auth", "token": forged, "id": "a1"})
        assert await a.expect_closed(1008) == [
            {"type": "error", "code": "unauthorized", "message": "invalid signature", "ref": "a1"}
        ]
    assert app.stats["auth_failures"] == 1


async def test_bad_token_in_header_closes_1008_without_hello() -> None:
    """A forged handshake token answers ``unauthorized`` (ref connection) and closes 1008."""
    app = auth_app()
    forged = sign_token("another-secret-0123456789", "eve")
    async with (
        app.serve("127.0.0.1", 0) as server,
        connect(server, token=forged, hello=False) as a,
    ):
        assert await a.expect_closed(1008) == [
            {
                "type": "error",
                "code": "unauthorized",
                "message": "invalid signature",
                "ref": "connection",
            }
        ]
        assert app.hub.sessions == {}


async def test_expired_token_in_header_closes_4200() -> None:
    """An expired handshake token answers ``token_expired`` and closes 4200 (re-auth)."""
    app = auth_app()
    expired = sign_token(SECRET, "eve", ttl=1, now=time.time() - 60)
    async with (
        app.serve("127.0.0.1", 0) as server,
        connect(server, token=expired, hello=False) as a,
    ):
        assert await a.expect_closed(4200) == [
            {
                "type": "error",
                "code": "token_expired",
                "message": "token expired",
                "ref": "connection",
            }
        ]


async def test_messages_before_auth_are_unauthorized_but_ping_passes() -> None:
    """With auth required, everything but ``ping`` and ``auth`` is refused until authenticated."""
    app = auth_app()
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        reply = await a.request({"type": "join", "room": "r"})
        assert reply == {
            "type": "error",
            "code": "unauthorized",
            "message": "authenticate first",
            "ref": "join",
        }
        reply = await a.request({"type": "rpc", "id": 3, "method": "rooms.list"})
        assert (reply["type"], reply["code"], reply["ref"]) == ("error", "unauthorized", 3)
        reply = await a.request({"type": "whoami", "id": "w"})
        assert (reply["code"], reply["ref"]) == ("unauthorized", "w")
        assert await a.request({"type": "ping", "id": 1}) == {"type": "pong", "id": 1}
        assert app.hub.rooms == {}
        await a.request({"type": "auth", "token": user_token("frank")})
        assert (await a.request({"type": "join", "room": "r"}))["members"] == ["frank"]


async def test_no_auth_within_auth_timeout_closes_4201() -> None:
    """No ``auth`` within auth_timeout: closed with 4201; an authenticated peer stays."""
    app = auth_app(auth_timeout=0.3)
    async with app.serve("127.0.0.1", 0) as server, connect(server) as authed:
        await authed.request({"type": "auth", "token": user_token("gina")})
        async with connect(server) as lazy:
            start = time.monotonic()
            assert await lazy.expect_closed(4201) == []
            assert time.monotonic() - start >= 0.2
            assert lazy.ws.close_reason == "no auth message within 0.3 s"
        await authed.barrier()
    assert app.stats["auth_timeouts"] == 1


async def test_token_expiry_closes_4200() -> None:
    """A connection whose token expires is closed with 4200 ``token expired``."""
    app = auth_app()
    async with (
        app.serve("127.0.0.1", 0) as server,
        connect(server, token=user_token("hana", ttl=0.4)) as a,
    ):
        start = time.monotonic()
        assert await a.expect_closed(4200) == []
        assert time.monotonic() - start >= 0.25
        assert a.ws.close_reason == "token expired"


async def test_refresh_extends_the_expiry() -> None:
    """A new ``auth`` with a later expiry moves the deadline; the unrefreshed peer closes first."""
    app = auth_app()
    async with (
        app.serve("127.0.0.1", 0) as server,
        connect(server, token=user_token("ivan", ttl=0.3)) as stale,
        connect(server, token=user_token("ivan", ttl=0.3)) as fresh,
    ):
        start = time.monotonic()
        reply = await fresh.request({"type": "auth", "token": user_token("ivan", ttl=0.9)})
        assert reply["status"] == "success" and reply["expires_at"] > time.time() + 0.5
        assert await stale.expect_closed(4200) == []
        await fresh.barrier()
        assert await fresh.expect_closed(4200) == []
        assert time.monotonic() - start >= 0.6


async def test_auth_as_another_user_closes_1008() -> None:
    """A connection cannot change its user: ``unauthorized`` then close 1008."""
    app = auth_app()
    async with (
        app.serve("127.0.0.1", 0) as server,
        connect(server, token=user_token("jill")) as a,
    ):
        await a.send({"type": "auth", "token": user_token("jack")})
        before = await a.expect_closed(1008)
        assert [(m["code"], m["message"]) for m in before] == [
            ("unauthorized", "a connection cannot change its user")
        ]


async def test_auth_message_without_verifier_is_refused() -> None:
    """An app without a verifier answers ``auth`` with ``unauthorized`` and stays open."""
    app = App()
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        reply = await a.request({"type": "auth", "token": "whatever"})
        assert (reply["type"], reply["code"]) == ("error", "unauthorized")
        await a.barrier()


async def test_jwt_hs256_over_the_wire() -> None:
    """JWTVerifier accepts a good HS256 token and refuses a forged or expired one with 1008."""
    app = App(auth=JWTVerifier(JWT_KEY, algorithms=["HS256"]))
    now = int(time.time())
    good = jwt.encode({"sub": "kate", "exp": now + 60}, JWT_KEY, algorithm="HS256")
    forged = jwt.encode({"sub": "kate", "exp": now + 60}, b"x" * 32, algorithm="HS256")
    expired = jwt.encode({"sub": "kate", "exp": now - 60}, JWT_KEY, algorithm="HS256")
    async with app.serve("127.0.0.1", 0) as server:
        async with connect(server) as a:
            reply = await a.request({"type": "auth", "token": good})
            assert reply == {
                "type": "auth",
                "status": "success",
                "user": "kate",
                "expires_at": now + 60,
            }
        async with connect(server, token=good) as b:
            assert b.hello is not None and b.hello["user"] == "kate"
        async with connect(server) as c:
            await c.send({"type": "auth", "token": forged})
            assert [m["message"] for m in await c.expect_closed(1008)] == ["invalid signature"]
        async with connect(server, token=expired, hello=False) as d:
            assert [m["message"] for m in await d.expect_closed(4200)] == ["token expired"]


async def test_anonymous_member_that_authenticates_leaves_cleanly() -> None:
    """With optional auth, a room joined before ``auth`` is left under the key it joined with."""
    app = App(auth=HMACVerifier(SECRET), auth_required=False)
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a, connect(server) as b:
        await a.join("lobby")
        await b.join("lobby")
        assert (await a.recv())["type"] == "userJoined"
        await b.request({"type": "auth", "token": user_token("lena")})
        assert b.session(app).key == "lena"
        await b.request({"type": "leave", "room": "lobby"})
        assert await a.recv() == {"type": "userLeft", "room": "lobby", "user": b.id}
        assert app.hub.members("lobby") == [a.id]
        reply = await a.call("presence", {"room": "lobby"})
        assert reply["result"] == [{"user": a.id, "connections": 1, "meta": {}}]


async def test_expiry_timer_is_cancelled_on_disconnect() -> None:
    """A connection that leaves before its token expires leaves no timer running."""
    app = auth_app()
    gone = track_disconnects(app)
    async with app.serve("127.0.0.1", 0) as server:
        async with connect(server, token=user_token("mona", ttl=60)) as a:
            session = a.session(app)
            timer = session.expiry_timer
            assert timer is not None and not timer.cancelled()
            assert session.metadata == {}
        assert await next_disconnect(gone) == session.id
        assert timer.cancelled() and session.expiry_timer is None
