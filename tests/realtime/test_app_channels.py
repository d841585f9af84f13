"""Channels over loopback: subscribe, publish, offsets, history recovery, limits, authorization."""

from __future__ import annotations

from typing import Any

from tidewire.realtime import App, Session

from .conftest import Peer, connect, next_disconnect, track_disconnects


async def subscribe(peer: Peer, channel: str, **extra: Any) -> dict[str, Any]:
    """Subscribe ``peer`` to ``channel`` and return the ``subscribed`` reply."""
    reply = await peer.request({"type": "subscribe", "channel": channel, **extra})
    assert reply["type"] == "subscribed" and reply["channel"] == channel, reply
    return reply


async def test_subscribe_replies_epoch_and_offset() -> None:
    """``subscribed`` carries the channel's epoch and last offset (0 for a new channel)."""
    app = App()
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a, connect(server) as b:
        first = await a.request({"type": "subscribe", "channel": "news", "id": 1})
        assert set(first) == {"type", "channel", "epoch", "offset", "id"}
        assert (first["offset"], first["id"]) == (0, 1)
        assert isinstance(first["epoch"], str) and first["epoch"]
        await a.request({"type": "publish", "channel": "news", "payload": 1, "id": "p"})
        await a.recv()
        second = await subscribe(b, "news")
        assert (second["epoch"], second["offset"]) == (first["epoch"], 1)


async def test_publish_reaches_every_subscriber_with_increasing_offsets() -> None:
    """Every subscriber gets each publication with offsets 1, 2, 3; non-subscribers get none."""
    app = App()
    async with (
        app.serve("127.0.0.1", 0) as server,
        connect(server) as a,
        connect(server) as b,
        connect(server) as publisher,
    ):
        await subscribe(a, "news")
        await subscribe(b, "news")
        for n in range(3):
            await publisher.send({"type": "publish", "channel": "news", "payload": {"n": n}})
        for peer in (a, b):
            got = [await peer.recv() for _ in range(3)]
            assert got == [
                {"type": "publish", "channel": "news", "payload": {"n": n}, "offset": n + 1}
                for n in range(3)
            ]
        await publisher.barrier()


async def test_publish_with_id_is_acknowledged() -> None:
    """``publish`` with an id answers ``published`` with the offset; without one, nothing."""
    app = App()
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        assert await a.request({"type": "publish", "channel": "c", "payload": "x", "id": "p1"}) == {
            "type": "published",
            "channel": "c",
            "offset": 1,
            "id": "p1",
        }
        await a.send({"type": "publish", "channel": "c", "payload": "y"})
        await a.barrier()
        assert await a.request({"type": "publish", "channel": "c", "payload": "z", "id": 9}) == {
            "type": "published",
            "channel": "c",
            "offset": 3,
            "id": 9,
        }


async def test_unsubscribe_stops_delivery() -> None:
    """After ``unsubscribed`` a client gets no more publications of the channel."""
    app = App()
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a, connect(server) as b:
        await subscribe(a, "c")
        await subscribe(b, "c")
        assert await a.request({"type": "unsubscribe", "channel": "c"}) == {
            "type": "unsubscribed",
            "channel": "c",
        }
        await b.send({"type": "publish", "channel": "c", "payload": 1})
        assert (await b.recv())["offset"] == 1
        await a.barrier()


async def test_recovery_returns_missed_publications_in_order() -> None:
    """``since`` returns exactly the missed publications, then live ones follow without gaps."""
    app = App()
    async with app.serve("127.0.0.1", 0) as server, connect(server) as pub:
        async with connect(server) as a:
            position = await subscribe(a, "feed")
            for n in (1, 2):
                await pub.send({"type": "publish", "channel": "feed", "payload": n})
                assert (await a.recv())["offset"] == n
        for n in (3, 4, 5):
            await pub.send({"type": "publish", "channel": "feed", "payload": n})
        await pub.barrier()
        async with connect(server) as a2:
            since = {"epoch": position["epoch"], "offset": 2}
            reply = await subscribe(a2, "feed", since=since)
            assert reply == {
                "type": "subscribed",
                "channel": "feed",
                "epoch": position["epoch"],
                "offset": 5,
                "recovered": True,
                "publications": [
                    {"type": "publish", "channel": "feed", "payload": n, "offset": n}
                    for n in (3, 4, 5)
                ],
            }
            await pub.send({"type": "publish", "channel": "feed", "payload": 6})
            assert await a2.recv() == {
                "type": "publish",
                "channel": "feed",
                "payload": 6,
                "offset": 6,
            }
            await a2.barrier()


async def test_recovery_when_nothing_was_missed() -> None:
    """``since`` at the top offset recovers with an empty list."""
    app = App()
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        position = await subscribe(a, "feed")
        since = {"epoch": position["epoch"], "offset": 0}
        reply = await subscribe(a, "feed", since=since)
        assert (reply["recovered"], reply["publications"], reply["offset"]) == (True, [], 0)


async def test_wrong_epoch_is_not_recovered() -> None:
    """A ``since`` with another epoch answers ``recovered: false`` and the current position."""
    app = App()
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        position = await subscribe(a, "feed")
        await a.send({"type": "publish", "channel": "feed", "payload": 1})
        await a.recv()
        reply = await subscribe(a, "feed", since={"epoch": "not-" + position["epoch"], "offset": 0})
        assert reply["recovered"] is False
        assert reply["publications"] == []
        assert (reply["epoch"], reply["offset"]) == (position["epoch"], 1)


async def test_gap_older_than_history_is_not_recovered() -> None:
    """With history_size=3, a gap of five publications answers ``recovered: false``."""
    app = App(history_size=3)
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a, connect(server) as b:
        position = await subscribe(a, "feed")
        for n in range(5):
            await b.send({"type": "publish", "channel": "feed", "payload": n})
        await b.barrier()
        lost = await subscribe(b, "feed", since={"epoch": position["epoch"], "offset": 0})
        assert (lost["recovered"], lost["publications"], lost["offset"]) == (False, [], 5)
        kept = await subscribe(b, "feed", since={"epoch": position["epoch"], "offset": 2})
        assert kept["recovered"] is True
        assert [p["offset"] for p in kept["publications"]] == [3, 4, 5]


async def test_bad_since_is_invalid() -> None:
    """A ``since`` without a string epoch and a non-negative offset gets ``invalid``."""
    app = App()
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        for since in ({"epoch": 1, "offset": 0}, {"epoch": "e", "offset": -1}, [1]):
            reply = await a.request({"type": "subscribe", "channel": "c", "since": since})
            assert (reply["type"], reply["code"], reply["ref"]) == ("error", "invalid", "subscribe")


async def test_max_channels_per_connection() -> None:
    """Past ``max_channels_per_connection`` a subscribe gets ``limit``."""
    app = App(max_channels_per_connection=2)
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        await subscribe(a, "c1")
        await subscribe(a, "c2")
        reply = await a.request({"type": "subscribe", "channel": "c3", "id": 3})
        assert (reply["type"], reply["code"], reply["ref"]) == ("error", "limit", 3)
        await subscribe(a, "c1")
        await a.request({"type": "unsubscribe", "channel": "c1"})
        await subscribe(a, "c3")


async def test_authorizer_refuses_subscribe_and_publish() -> None:
    """An authorizer returning False answers ``forbidden`` and nothing is delivered."""
    app = App()

    @app.authorize_with
    def authorizer(session: Session, name: str, action: str) -> bool:
        if action == "subscribe":
            return name != "vault"
        if action == "publish":
            return name != "readonly"
        return True

    async with app.serve("127.0.0.1", 0) as server, connect(server) as a, connect(server) as b:
        reply = await a.request({"type": "subscribe", "channel": "vault", "id": 1})
        assert (reply["type"], reply["code"], reply["ref"]) == ("error", "forbidden", 1)
        assert "vault" not in app.hub.subscribers
        await subscribe(a, "readonly")
        reply = await b.request({"type": "publish", "channel": "readonly", "payload": 1})
        assert (reply["type"], reply["code"], reply["ref"]) == ("error", "forbidden", "publish")
        await a.barrier()
        position = await subscribe(b, "readonly")
        assert position["offset"] == 0


async def test_app_publish_from_server_code() -> None:
    """``await app.publish()`` numbers and delivers like a client publish."""
    app = App()
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        await subscribe(a, "ticker")
        pub = await app.publish("ticker", {"price": 3})
        assert (pub.offset, pub.publisher) == (1, None)
        assert await a.recv() == {
            "type": "publish",
            "channel": "ticker",
            "payload": {"price": 3},
            "offset": 1,
        }


async def test_disconnect_unsubscribes() -> None:
    """A disconnected client is no longer a subscriber."""
    app = App()
    gone = track_disconnects(app)
    async with app.serve("127.0.0.1", 0) as server, connect(server) as a:
        async with connect(server) as b:
            await subscribe(b, "c")
            await subscribe(a, "c")
            assert len(app.hub.subscribers["c"]) == 2
        assert await next_disconnect(gone) == b.id
        await a.send({"type": "publish", "channel": "c", "payload": 1})
        assert (await a.recv())["offset"] == 1
        assert list(app.hub.subscribers["c"]) == [a.id]
