"""The App's HTTP API over loopback: admin auth, publish, broadcast, presence, disconnect."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.exceptions import ConnectionClosed

from tidewire.errors import RealtimeError, Unauthorized
from tidewire.realtime import App, HMACVerifier, Published, publish

from .conftest import SECRET, TIMEOUT, connect, user_token
from .httpkit import ADMIN_TOKEN, http

ADMIN_PATHS = [
    ("GET", "/stats"),
    ("GET", "/metrics"),
    ("GET", "/debug/connections/abc"),
    ("POST", "/api/publish"),
    ("POST", "/api/broadcast"),
    ("GET", "/api/presence/lobby"),
    ("POST", "/api/disconnect"),
]


def admin_app(**kwargs: object) -> App:
    """An App with the admin endpoints on and rate limits off."""
    return App(admin_token=ADMIN_TOKEN, rate_limits=None, **kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ admin auth


async def test_admin_endpoints_are_404_without_a_token() -> None:
    """With no admin_token every admin path answers exactly like a path that does not exist."""
    app = App()
    async with app.serve("127.0.0.1", 0) as server:
        for method, path in ADMIN_PATHS:
            answer = await http(server, method, path, token=ADMIN_TOKEN)
            assert answer.status == 404, path
            assert answer.text == f"not found: {path}\n"
        assert (await http(server, "GET", "/nowhere")).text == "not found: /nowhere\n"


async def test_wrong_or_missing_token_is_401_right_token_200() -> None:
    """A missing, wrong or non-Bearer token is 401 with a challenge; the right one passes."""
    app = admin_app()
    async with app.serve("127.0.0.1", 0) as server:
        for method, path in ADMIN_PATHS:
            for token in (None, "x" * len(ADMIN_TOKEN), ADMIN_TOKEN[:-1]):
                answer = await http(server, method, path, token=token)
                assert answer.status == 401, (path, token)
                assert answer.headers["www-authenticate"] == 'Bearer realm="tidewire"'
                assert answer.json()["error"] == "unauthorized"
        basic = await http(
            server, "GET", "/stats", headers={"Authorization": f"Basic {ADMIN_TOKEN}"}
        )
        assert basic.status == 401
        ok = await http(server, "GET", "/stats", token=ADMIN_TOKEN)
        assert ok.status == 200 and ok.headers["cache-control"] == "no-store"
        assert app.metrics.requests[("stats", 401)] == 4
        assert app.metrics.requests[("stats", 200)] == 1


async def test_metrics_public_only_when_asked() -> None:
    """/metrics needs the token unless metrics_public=True; the other endpoints always do."""
    private = admin_app()
    async with private.serve("127.0.0.1", 0) as server:
        assert (await http(server, "GET", "/metrics")).status == 401
        assert (await http(server, "GET", "/metrics", token=ADMIN_TOKEN)).status == 200
    public = App(metrics_public=True)
    async with public.serve("127.0.0.1", 0) as server:
        answer = await http(server, "GET", "/metrics")
        assert answer.status == 200 and "tidewire_connections 0" in answer.text
        assert (await http(server, "GET", "/stats", token=ADMIN_TOKEN)).status == 404


def test_short_admin_token_is_refused() -> None:
    """An admin token shorter than 16 characters raises at construction."""
    with pytest.raises(ValueError, match="at least 16"):
        App(admin_token="short")


# ------------------------------------------------------------------------- request errors


async def test_wrong_method_is_405_with_allow() -> None:
    """GET on a POST endpoint and POST on a GET endpoint are 405 naming the allowed method."""
    app = admin_app()
    async with app.serve("127.0.0.1", 0) as server:
        answer = await http(server, "GET", "/api/publish", token=ADMIN_TOKEN)
        assert (answer.status, answer.headers["allow"]) == (405, "POST")
        assert answer.json()["error"] == "method_not_allowed"
        answer = await http(server, "POST", "/stats", token=ADMIN_TOKEN, json_body={})
        assert (answer.status, answer.headers["allow"]) == (405, "GET")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "bad_json"),
        (b"{not json", "bad_json"),
        (b"\xff\xfe", "bad_json"),
        (b'{"channel": "news", "payload": NaN}', "bad_json"),
        (b"[1, 2]", "bad_json"),
        (b'{"payload": 1}', "invalid"),
        (b'{"channel": "has space", "payload": 1}', "invalid"),
        (b'{"channel": "news"}', "invalid"),
    ],
)
async def test_bad_publish_bodies_are_400(body: bytes, code: str) -> None:
    """Empty, malformed, non-object or incomplete bodies are 400 with a code and a message."""
    app = admin_app()
    async with app.serve("127.0.0.1", 0) as server:
        answer = await http(server, "POST", "/api/publish", token=ADMIN_TOKEN, body=body)
    assert answer.status == 400
    error = answer.json()
    assert error["error"] == code and error["message"]
    assert app.stats["publications"] == 0


async def test_body_over_the_limit_is_413() -> None:
    """A body over max_body_size is refused by the transport before the endpoint runs."""
    app = admin_app()
    async with app.serve("127.0.0.1", 0, max_body_size=1000) as server:
        payload = {"channel": "news", "payload": "x" * 1000}
        answer = await http(server, "POST", "/api/publish", token=ADMIN_TOKEN, json_body=payload)
        assert answer.status == 413 and "max_body_size=1000" in answer.text
        small = {"channel": "news", "payload": "x" * 100}
        answer = await http(server, "POST", "/api/publish", token=ADMIN_TOKEN, json_body=small)
        assert answer.status == 200
    assert app.stats["publications"] == 1


# -------------------------------------------------------------------------------- publish


async def test_publish_reaches_subscribers_with_offsets() -> None:
    """POST /api/publish numbers publications in the subscriber's epoch and delivers them."""
    app = admin_app()
    async with app.serve("127.0.0.1", 0) as server, connect(server) as sub:
        subscribed = await sub.request({"type": "subscribe", "channel": "news"})
        assert subscribed["type"] == "subscribed" and subscribed["offset"] == 0
        for n in (1, 2):
            answer = await http(
                server,
                "POST",
                "/api/publish",
                token=ADMIN_TOKEN,
                json_body={"channel": "news", "payload": {"n": n}},
            )
            assert answer.status == 200
            assert answer.json() == {"channel": "news", "offset": n, "epoch": subscribed["epoch"]}
            got = await sub.recv()
            assert got == {"type": "publish", "channel": "news", "payload": {"n": n}, "offset": n}
    assert app.metrics.requests[("publish", 200)] == 2


async def test_publish_helper_over_http_and_in_process() -> None:
    """publish() posts with the token, raises on refusals, or publishes in-process given an App."""
    app = admin_app()
    async with app.serve("127.0.0.1", 0) as server, connect(server) as sub:
        await sub.request({"type": "subscribe", "channel": "news"})
        base = f"http://127.0.0.1:{server.port}/"
        result = await publish(base, "news", {"text": "hi"}, token=ADMIN_TOKEN, timeout=TIMEOUT)
        assert isinstance(result, Published)
        assert (result.channel, result.offset) == ("news", 1)
        assert (await sub.recv())["payload"] == {"text": "hi"}

        with pytest.raises(Unauthorized, match="HTTP 401"):
            await publish(base, "news", 1, token="wrong" * 4, timeout=TIMEOUT)
        with pytest.raises(RealtimeError) as info:
            await publish(base, "bad name", 1, token=ADMIN_TOKEN, timeout=TIMEOUT)
        assert info.value.code == "invalid" and "HTTP 400" in str(info.value)
        with pytest.raises(ValueError, match="http"):
            await publish("file:///etc/passwd", "news", 1, token=ADMIN_TOKEN)
        with pytest.raises(ValueError, match="token"):
            await publish(base, "news", 1)

        local = await publish(app, "news", "direct")
        assert (local.offset, local.epoch) == (2, result.epoch)
        assert (await sub.recv())["payload"] == "direct"
        await sub.barrier()  # the refused calls published nothing


# ------------------------------------------------------------------------------ broadcast


async def test_broadcast_reaches_exactly_its_target() -> None:
    """room, user, connection and all each reach their receivers and nobody else."""
    app = admin_app(auth=HMACVerifier(SECRET), auth_required=False)
    message = {"type": "notice", "text": "hello"}
    async with (
        app.serve("127.0.0.1", 0) as server,
        connect(server) as a,
        connect(server, token=user_token("bob")) as b,
        connect(server) as c,
    ):
        await a.join("lobby")
        cases = [
            ({"room": "lobby"}, [a], "lobby"),
            ({"user": "bob"}, [b], "bob"),
            ({"connection": c.id}, [c], c.id),
            ({"all": True}, [a, b, c], None),
            ({"all": True, "exclude": a.id}, [b, c], None),
        ]
        for target, receivers, name in cases:
            answer = await http(
                server,
                "POST",
                "/api/broadcast",
                token=ADMIN_TOKEN,
                json_body={**target, "message": message},
            )
            assert answer.status == 200, answer.body
            reply = answer.json()
            assert reply["name"] == name and reply["local_receivers"] == len(receivers)
            for peer in receivers:
                assert await peer.recv() == message
            for peer in (a, b, c):
                await peer.barrier()  # nothing else arrived anywhere
        for bad in (
            {"message": message},
            {"room": "lobby", "user": "bob", "message": message},
            {"room": "lobby", "message": {"text": "no type"}},
            {"room": "lobby", "message": "text"},
            {"all": 1, "message": message},
        ):
            answer = await http(server, "POST", "/api/broadcast", token=ADMIN_TOKEN, json_body=bad)
            assert (answer.status, answer.json()["error"]) == (400, "invalid"), bad
    assert app.metrics.room_messages == {}  # lobby emptied: its counter went with it


# ------------------------------------------------------------------------------- presence


async def test_presence_lists_members() -> None:
    """GET /api/presence/{room} lists users with connection counts; unknown rooms are empty."""
    app = admin_app(auth=HMACVerifier(SECRET), auth_required=False)
    async with (
        app.serve("127.0.0.1", 0) as server,
        connect(server, token=user_token("ann")) as ann1,
        connect(server, token=user_token("ann")) as ann2,
        connect(server) as anon,
    ):
        for peer in (ann1, ann2, anon):
            await peer.join("room:1")
        answer = await http(server, "GET", "/api/presence/room%3A1", token=ADMIN_TOKEN)
        assert answer.status == 200
        body = answer.json()
        assert (body["room"], body["count"], body["connections"]) == ("room:1", 2, 3)
        assert sorted((m["user"], m["connections"]) for m in body["members"]) == sorted(
            [("ann", 2), (anon.id, 1)]
        )
        empty = await http(server, "GET", "/api/presence/nobody", token=ADMIN_TOKEN)
        assert empty.json() == {"room": "nobody", "count": 0, "connections": 0, "members": []}
        bad = await http(server, "GET", "/api/presence/a%20b", token=ADMIN_TOKEN)
        assert bad.status == 400 and bad.json()["error"] == "invalid"


# ----------------------------------------------------------------------------- disconnect


async def test_disconnect_closes_with_the_given_code() -> None:
    """POST /api/disconnect closes a connection (or all of a user's) with the code and reason."""
    app = admin_app(auth=HMACVerifier(SECRET), auth_required=False)
    async with (
        app.serve("127.0.0.1", 0) as server,
        connect(server) as victim,
        connect(server, token=user_token("eve")) as eve1,
        connect(server, token=user_token("eve")) as eve2,
        connect(server) as bystander,
    ):
        answer = await http(
            server,
            "POST",
            "/api/disconnect",
            token=ADMIN_TOKEN,
            json_body={"connection": victim.id, "code": 4000, "reason": "rebalance"},
        )
        assert answer.json() == {"disconnected": 1}
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(victim.ws.recv(), TIMEOUT)
        assert info.value.rcvd is not None
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (4000, "rebalance")

        answer = await http(
            server, "POST", "/api/disconnect", token=ADMIN_TOKEN, json_body={"user": "eve"}
        )
        assert answer.json() == {"disconnected": 2}
        for peer in (eve1, eve2):
            await peer.expect_closed(1000)
        await bystander.barrier()

        for bad in (
            {"connection": bystander.id, "code": 1005},
            {"connection": bystander.id, "code": "4000"},
            {"connection": bystander.id, "code": True},
            {"connection": bystander.id, "reason": "x" * 124},
            {"connection": bystander.id, "user": "eve"},
            {"code": 4000},
        ):
            answer = await http(server, "POST", "/api/disconnect", token=ADMIN_TOKEN, json_body=bad)
            assert answer.status == 400, bad
        gone = await http(
            server, "POST", "/api/disconnect", token=ADMIN_TOKEN, json_body={"connection": "nope"}
        )
        assert gone.json() == {"disconnected": 0}
        await bystander.barrier()
    assert app.metrics.close_codes[4000] == 1


async def test_errors_are_json_with_a_message() -> None:
    """Every API refusal is a JSON object with ``error`` and ``message`` and no-store caching."""
    app = admin_app()
    async with app.serve("127.0.0.1", 0) as server:
        answer = await http(server, "POST", "/api/broadcast", token=ADMIN_TOKEN, body=b"[]")
    assert answer.status == 400
    assert set(json.loads(answer.body)) == {"error", "message"}
    assert answer.headers["cache-control"] == "no-store"
