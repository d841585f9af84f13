"""The subscribe race: publications made while the broker answers are neither lost nor doubled.

``subscribe`` registers the session first and holds its live publications
back while it awaits the broker's position or recovery; after the
``subscribed`` reply it sends the held ones the reply does not cover.  A
gated MemoryBroker makes both interleavings happen on demand: the answer
computed before the concurrent publishes (a Redis reply still in flight)
and after them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from tidewire.errors import BrokerError
from tidewire.realtime import App, MemoryBroker
from tidewire.realtime.brokers import Node, Target
from tidewire.realtime.channels import Recovery

from .conftest import TIMEOUT, Peer, connect


class GatedBroker(MemoryBroker):
    """A MemoryBroker whose next position/recover waits for ``gate``.

    ``answer_first``: the answer is computed before waiting (the publishes
    that happen meanwhile are newer than the reply); otherwise after.
    ``fail``: the gated call raises BrokerError instead of answering.
    """

    def __init__(self, *, answer_first: bool, fail: bool = False) -> None:
        """Armed for one call."""
        super().__init__()
        self.answer_first = answer_first
        self.fail = fail
        self.armed = False
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def _gated(self, answer: Any) -> Any:
        if not self.armed:
            return await answer()
        self.armed = False
        result = await answer() if self.answer_first else None
        self.entered.set()
        await asyncio.wait_for(self.gate.wait(), TIMEOUT)
        if self.fail:
            raise BrokerError("cannot recover: Redis is unavailable (test)")
        return result if self.answer_first else await answer()

    async def recover(self, channel: str, epoch: str, offset: int, now: float) -> Recovery:
        """Recovery, through the gate."""
        parent = super().recover

        async def answer() -> Recovery:
            return await parent(channel, epoch, offset, now)

        result: Recovery = await self._gated(answer)
        return result

    async def position(self, channel: str, now: float) -> tuple[str, int]:
        """Position, through the gate."""
        parent = super().position

        async def answer() -> tuple[str, int]:
            return await parent(channel, now)

        result: tuple[str, int] = await self._gated(answer)
        return result


async def offsets_after_subscribe(peer: Peer, last: int) -> tuple[dict[str, Any], list[int]]:
    """The ``subscribed`` reply (must come first) and every offset received up to ``last``."""
    reply = await peer.recv()
    assert reply["type"] == "subscribed", f"expected the reply first, got {reply}"
    offsets = [pub["offset"] for pub in reply.get("publications", [])]
    seen = max(offsets, default=reply["offset"])
    while seen < last:
        envelope = await peer.recv()
        assert envelope["type"] == "publish", envelope
        offsets.append(envelope["offset"])
        seen = envelope["offset"]
    await peer.barrier()
    return reply, offsets


@pytest.mark.parametrize("answer_first", [True, False], ids=["reply-in-flight", "reply-late"])
@pytest.mark.parametrize("since", [True, False], ids=["since", "fresh"])
async def test_publishes_during_subscribe_arrive_once_in_order(
    answer_first: bool, since: bool
) -> None:
    """Publications made while subscribe awaits the broker come after the reply, once, in order."""
    broker = GatedBroker(answer_first=answer_first)
    app = App(broker=broker)
    async with app.serve("127.0.0.1", 0) as server, connect(server) as peer:
        for n in range(3):
            await app.publish("news", n)
        epoch, _ = await broker.position("news", app.clock())
        broker.armed = True
        request: dict[str, Any] = {"type": "subscribe", "channel": "news"}
        if since:
            request["since"] = {"epoch": epoch, "offset": 1}
        await peer.send(request)
        await asyncio.wait_for(broker.entered.wait(), TIMEOUT)
        for n in range(3, 6):
            await app.publish("news", n)
        broker.gate.set()
        reply, offsets = await offsets_after_subscribe(peer, 6)
        assert reply["offset"] == (3 if answer_first else 6)
        # With since: everything after offset 1; without: everything after the reply.
        first = 2 if since else reply["offset"] + 1
        assert offsets == list(range(first, 7))
        await app.publish("news", 6)
        assert (await peer.recv())["offset"] == 7


async def test_failed_subscribe_leaves_no_subscription() -> None:
    """A broker failure while subscribing answers an error and subscribes nothing."""
    broker = GatedBroker(answer_first=False, fail=True)
    app = App(broker=broker)
    async with app.serve("127.0.0.1", 0) as server, connect(server) as peer:
        broker.armed = True
        await peer.send({"type": "subscribe", "channel": "news", "id": 1})
        await asyncio.wait_for(broker.entered.wait(), TIMEOUT)
        await app.publish("news", "during")
        broker.gate.set()
        error = await peer.recv()
        assert (error["type"], error["code"], error["ref"]) == ("error", "broker_unavailable", 1)
        await app.publish("news", "after")
        await peer.barrier()
        assert peer.session(app).channels == set()
        assert "news" not in app.hub.subscribers and "news" not in app.hub.held


async def test_failed_resubscribe_keeps_the_subscription_and_its_publications() -> None:
    """A failed re-subscribe keeps the existing subscription; what was held is still sent."""
    broker = GatedBroker(answer_first=False, fail=True)
    app = App(broker=broker)
    async with app.serve("127.0.0.1", 0) as server, connect(server) as peer:
        first = await peer.request({"type": "subscribe", "channel": "news"})
        assert first["type"] == "subscribed"
        broker.armed = True
        await peer.send({"type": "subscribe", "channel": "news", "id": 2})
        await asyncio.wait_for(broker.entered.wait(), TIMEOUT)
        await app.publish("news", "during")
        broker.gate.set()
        got = [await peer.recv(), await peer.recv()]
        assert [g["type"] for g in got] == ["publish", "error"]
        assert got[0]["offset"] == 1 and got[1]["code"] == "broker_unavailable"
        await app.publish("news", "after")
        assert (await peer.recv())["offset"] == 2


class LaggingBroker(MemoryBroker):
    """A MemoryBroker whose deliveries wait for :meth:`flush`.

    Like Redis, where the answer to "what is the position?" can come back
    before the subscription has delivered the publications it counted.
    """

    def __init__(self) -> None:
        """Nothing queued."""
        super().__init__()
        self.node: Node | None = None
        self.queue: list[tuple[Target, str, str, str | None]] = []

    async def start(self, node: Node) -> None:
        """Queue deliveries for ``node``."""
        self.node = node
        await super().start(self)

    def deliver(self, target: Target, name: str, text: str, exclude: str | None) -> None:
        """Queue one delivery."""
        self.queue.append((target, name, text, exclude))

    def receivers(self, target: Target, name: str) -> Sequence[object]:
        """The real node's receivers."""
        assert self.node is not None
        return self.node.receivers(target, name)

    def flush(self) -> None:
        """Hand the queued deliveries to the node, in order."""
        assert self.node is not None
        queue, self.queue = self.queue, []
        for delivery in queue:
            self.node.deliver(*delivery)


async def test_publications_the_reply_covered_are_not_delivered_again() -> None:
    """Publications counted in the reply but delivered after it are dropped for that client only."""
    broker = LaggingBroker()
    app = App(broker=broker)
    async with (
        app.serve("127.0.0.1", 0) as server,
        connect(server) as early,
        connect(server) as late,
    ):
        assert (await early.request({"type": "subscribe", "channel": "c"}))["offset"] == 0
        for n in range(2):
            await app.publish("c", n)
        assert (await late.request({"type": "subscribe", "channel": "c"}))["offset"] == 2
        broker.flush()
        assert [(await early.recv())["offset"] for _ in range(2)] == [1, 2]
        await late.barrier()
        await app.publish("c", 2)
        broker.flush()
        assert (await early.recv())["offset"] == (await late.recv())["offset"] == 3
        assert app.hub.floors == {} and app.hub.held == {}
