"""The broker contract: what every Broker must do, as checks any broker kind can run.

A :class:`BrokerKit` says how to make brokers of one kind and how to make that
kind lose its history (a restart without persistence).  Each ``check_*``
coroutine takes a kit and fails with an assertion naming what broke.
``tests/realtime/test_brokers.py`` runs every check against MemoryBroker and
RedisBroker; a future ``tidewire.testing.check_broker(factory)`` can run the
same list.  Waits are bounded: a delivery that does not come fails after
``TIMEOUT`` seconds.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from tidewire.errors import BrokerError
from tidewire.realtime.brokers import Broker, Target
from tidewire.realtime.channels import Publication
from tidewire.realtime.presence import Member, PresenceUpdate, RoomPresence

#: Seconds to wait for a delivery that goes through a real broker.
TIMEOUT = 3.0

Delivery = tuple[Target, str, str, str | None]


@dataclass
class BrokerKit:
    """How to make brokers of one kind; ``make(**options)`` gives a new, unstarted one.

    Brokers of one kit share history when the kind can (Redis: same prefix);
    ``lose_history()`` makes the kind forget it, as a restart without
    persistence does.
    """

    name: str
    make: Callable[..., Broker]
    lose_history: Callable[[], Awaitable[None]]
    started: list[Broker] = field(default_factory=list)

    async def start(self, node: RecordingNode, **options: Any) -> Broker:
        """A new broker of this kind, started on ``node`` (closed by :meth:`close_all`)."""
        broker = self.make(**options)
        await broker.start(node)
        self.started.append(broker)
        return broker

    async def close_all(self) -> None:
        """Close every broker this kit started."""
        for broker in self.started:
            await broker.close()
        self.started.clear()


class RecordingNode:
    """A Node that records what it is given; follows ``channels``, holds ``connections``."""

    def __init__(self, channels: Sequence[str] = (), connections: Sequence[str] = ()) -> None:
        """A node subscribed to ``channels`` with local ``connections``."""
        self.deliveries: list[Delivery] = []
        self.channels = set(channels)
        self.connections = set(connections)
        self._changed = asyncio.Event()

    def deliver(self, target: Target, name: str, text: str, exclude: str | None) -> None:
        """Record one delivery."""
        self.deliveries.append((target, name, text, exclude))
        self._changed.set()

    def receivers(self, target: Target, name: str) -> Sequence[object]:
        """Itself for followed channels, local connections and every other target."""
        if target is Target.CHANNEL:
            return [self] if name in self.channels else []
        if target is Target.CONNECTION:
            return [self] if name in self.connections else []
        return [self]

    async def wait_for(self, count: int, timeout: float = TIMEOUT) -> list[Delivery]:
        """The deliveries once there are at least ``count`` (fails after ``timeout`` s)."""
        async with asyncio.timeout(timeout):
            while len(self.deliveries) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.deliveries

    def offsets(self, channel: str) -> list[int]:
        """The offsets of the ``publish`` envelopes delivered for ``channel``, in order."""
        found = []
        for target, name, text, _ in self.deliveries:
            envelope = json.loads(text)
            if target is Target.CHANNEL and name == channel and envelope["type"] == "publish":
                found.append(envelope["offset"])
        return found


async def settle(broker: Broker) -> None:
    """Wait until what ``broker`` sent so far has come back through it (its probe)."""
    assert await broker.probe(TIMEOUT), f"{broker!r}: probe did not come back"


async def publish_n(broker: Broker, channel: str, n: int, now: float = 1000.0) -> list[int]:
    """Publish payloads 0..n-1 one after the other; their offsets."""
    offsets = []
    for i in range(n):
        pub = await broker.publish(channel, {"n": i}, publisher=None, now=now)
        offsets.append(pub.offset)
    return offsets


# ------------------------------------------------------------------ checks


async def check_send_reaches_the_node_once(kit: BrokerKit) -> None:
    """send() delivers target, name, text and exclude intact, exactly once each."""
    node = RecordingNode(connections=["c-local"])
    broker = await kit.start(node)
    sends: list[Delivery] = [
        (Target.ALL, "", '{"type":"a"}', None),
        (Target.ROOM, "lobby", '{"type":"r","text":"h\\u00e9\\n"}', "conn-1"),
        (Target.USER, "alice", '{"type":"u"}', None),
        (Target.CONNECTION, "c-local", '{"type":"c"}', None),
        (Target.CHANNEL, "news", '{"type":"n"}', None),
    ]
    for target, name, text, exclude in sends:
        await broker.send(target, name, text, exclude)
    await settle(broker)
    assert node.deliveries == sends


async def check_publish_numbers_densely_under_concurrency(kit: BrokerKit) -> None:
    """Concurrent publishes get offsets 1..N, each once; the node sees them in offset order."""
    node = RecordingNode(channels=["news"])
    broker = await kit.start(node)
    pubs = await asyncio.gather(
        *(broker.publish("news", i, publisher=None, now=1000.0) for i in range(30))
    )
    assert sorted(pub.offset for pub in pubs) == list(range(1, 31))
    await node.wait_for(30)
    await settle(broker)
    assert node.offsets("news") == list(range(1, 31))
    by_offset = {pub.offset: pub for pub in pubs}
    for _, _, text, exclude in node.deliveries:
        envelope = json.loads(text)
        assert envelope == by_offset[envelope["offset"]].envelope() and exclude is None


async def check_publish_targets_its_channel(kit: BrokerKit) -> None:
    """A publication goes to (CHANNEL, its channel); one nobody here follows may be skipped."""
    node = RecordingNode(channels=["a"])
    broker = await kit.start(node)
    await broker.publish("b", "not followed", publisher=None, now=1.0)
    await broker.publish("a", "followed", publisher=None, now=1.0)
    await node.wait_for(1)
    await settle(broker)
    got = [(target, name) for target, name, _, _ in node.deliveries]
    assert got.count((Target.CHANNEL, "a")) == 1
    assert set(got) <= {(Target.CHANNEL, "a"), (Target.CHANNEL, "b")}


async def check_publication_fields_survive_the_history(kit: BrokerKit) -> None:
    """Recovered publications equal the published ones: payload, time, publisher, channel."""
    broker = await kit.start(RecordingNode())
    payloads: list[Any] = [{"nested": [1, 2.5, None, True]}, 'h\u00e9 \u2603 "q"\n', 0, None]
    published = []
    for i, payload in enumerate(payloads):
        publisher = None if i % 2 else f"user-{i}"
        published.append(
            await broker.publish("ch", payload, publisher=publisher, now=1000.0 + i / 4)
        )
    epoch, top = await broker.position("ch", 1001.0)
    assert top == len(payloads)
    recovery = await broker.recover("ch", epoch, 0, 1001.0)
    assert recovery.recovered and recovery.publications == tuple(published)
    assert [pub.offset for pub in published] == [1, 2, 3, 4]
    assert all(isinstance(pub, Publication) for pub in recovery.publications)


async def check_position_and_independent_channels(kit: BrokerKit) -> None:
    """A new channel is at (epoch, 0); the epoch is stable; each channel counts on its own."""
    broker = await kit.start(RecordingNode())
    epoch, top = await broker.position("x", 1.0)
    assert isinstance(epoch, str) and epoch and top == 0
    await publish_n(broker, "x", 3)
    await publish_n(broker, "y", 1)
    assert await broker.position("x", 2.0) == (epoch, 3)
    y_epoch, y_top = await broker.position("y", 2.0)
    assert y_top == 1
    assert await broker.position("y", 3.0) == (y_epoch, 1)


async def check_recovery_answers(kit: BrokerKit) -> None:
    """Recovery: all missed, in order; none at the top; refused for a wrong epoch or the future."""
    broker = await kit.start(RecordingNode())
    epoch, _ = await broker.position("c", 1000.0)
    await publish_n(broker, "c", 3)
    full = await broker.recover("c", epoch, 0, 1000.0)
    assert (full.recovered, full.epoch, full.offset) == (True, epoch, 3)
    got = [(p.offset, p.payload) for p in full.publications]
    assert got == [(i + 1, {"n": i}) for i in range(3)]
    tail = await broker.recover("c", epoch, 2, 1000.0)
    assert tail.recovered and [p.offset for p in tail.publications] == [3]
    top = await broker.recover("c", epoch, 3, 1000.0)
    assert (top.recovered, top.offset, top.publications) == (True, 3, ())
    other = await broker.recover("c", "not-" + epoch, 1, 1000.0)
    assert (other.recovered, other.epoch, other.offset, other.publications) == (False, epoch, 3, ())
    ahead = await broker.recover("c", epoch, 4, 1000.0)
    assert (ahead.recovered, ahead.epoch, ahead.offset, ahead.publications) == (False, epoch, 3, ())


async def check_history_size_limit(kit: BrokerKit) -> None:
    """Only the last ``history_size`` are kept: an older gap is refused, a newer one served."""
    broker = await kit.start(RecordingNode(), history_size=5)
    epoch, _ = await broker.position("c", 1000.0)
    assert await publish_n(broker, "c", 8) == list(range(1, 9))
    kept = await broker.recover("c", epoch, 3, 1000.0)
    assert kept.recovered and [p.offset for p in kept.publications] == [4, 5, 6, 7, 8]
    lost = await broker.recover("c", epoch, 2, 1000.0)
    assert (lost.recovered, lost.offset, lost.publications) == (False, 8, ())


async def check_history_size_zero_counts_but_keeps_nothing(kit: BrokerKit) -> None:
    """``history_size=0``: offsets still count up; only "nothing missed" recovers."""
    broker = await kit.start(RecordingNode(), history_size=0)
    epoch, _ = await broker.position("c", 1000.0)
    assert await publish_n(broker, "c", 3) == [1, 2, 3]
    assert not (await broker.recover("c", epoch, 2, 1000.0)).recovered
    assert (await broker.recover("c", epoch, 3, 1000.0)).recovered


async def check_history_ttl_limit(kit: BrokerKit) -> None:
    """Publications older than ``history_ttl`` (by the ``now`` passed in) are not recovered."""
    broker = await kit.start(RecordingNode(), history_ttl=60.0)
    epoch, _ = await broker.position("c", 1000.0)
    await broker.publish("c", "old", publisher=None, now=1000.0)
    await broker.publish("c", "new", publisher=None, now=1030.0)
    both = await broker.recover("c", epoch, 0, 1050.0)
    assert both.recovered and [p.payload for p in both.publications] == ["old", "new"]
    assert not (await broker.recover("c", epoch, 0, 1070.0)).recovered
    newer = await broker.recover("c", epoch, 1, 1070.0)
    assert newer.recovered and [p.payload for p in newer.publications] == ["new"]
    assert not (await broker.recover("c", epoch, 1, 1095.0)).recovered
    at_top = await broker.recover("c", epoch, 2, 5000.0)
    assert (at_top.recovered, at_top.offset, at_top.publications) == (True, 2, ())


async def check_new_epoch_after_history_loss(kit: BrokerKit) -> None:
    """After the history is lost: a new epoch, offsets from 1 again, old positions refused."""
    first = await kit.start(RecordingNode())
    old_epoch, _ = await first.position("c", 1000.0)
    await publish_n(first, "c", 3)
    await kit.close_all()
    await kit.lose_history()
    broker = await kit.start(RecordingNode())
    epoch, top = await broker.position("c", 1000.0)
    assert epoch != old_epoch and top == 0
    recovery = await broker.recover("c", old_epoch, 3, 1000.0)
    assert (recovery.recovered, recovery.epoch, recovery.offset) == (False, epoch, 0)
    assert (await broker.publish("c", "again", publisher=None, now=1000.0)).offset == 1


async def check_close_stops_delivery(kit: BrokerKit) -> None:
    """After close() the node gets nothing more (send may raise BrokerError instead)."""
    node = RecordingNode(channels=["c"])
    broker = await kit.start(node)
    await broker.close()
    try:
        await broker.send(Target.ALL, "", '{"type":"late"}')
    except BrokerError:
        pass
    await asyncio.sleep(0.05)
    assert node.deliveries == []


async def check_healthy_and_probe_when_up(kit: BrokerKit) -> None:
    """A started broker reports healthy and its probe comes back."""
    broker = await kit.start(RecordingNode())
    assert broker.healthy
    assert await broker.probe(TIMEOUT)


async def check_presence_first_join_and_last_leave(kit: BrokerKit) -> None:
    """Presence: only a member's first connection is a change, only its last leave is."""
    broker = await kit.start(RecordingNode())
    join, leave = broker.presence_join, broker.presence_leave
    assert await join("lobby", "alice", "c1", {}) == PresenceUpdate(True, 1, "alice")
    assert await join("lobby", "alice", "c2", {}) == PresenceUpdate(False, 1, "alice")
    assert await join("lobby", "bob", "c3", {}) == PresenceUpdate(True, 2, "bob")
    assert await join("lobby", "alice", "c1", {}) == PresenceUpdate(False, 2, "alice")
    assert await join("lobby", "mallory", "c1", {}) == PresenceUpdate(False, 2, "alice")
    assert await leave("lobby", "c1") == PresenceUpdate(False, 2, "alice")
    assert await leave("lobby", "c2") == PresenceUpdate(True, 1, "alice")
    assert await leave("lobby", "c2") == PresenceUpdate(False, 1, None)
    assert await leave("nowhere", "c3") == PresenceUpdate(False, 0, None)
    assert await leave("lobby", "c3") == PresenceUpdate(True, 0, "bob")
    assert await broker.presence_members("lobby") == RoomPresence(0, 0, ())
    assert await broker.presence_rooms() == []


async def check_presence_lists_members_with_meta(kit: BrokerKit) -> None:
    """Members sorted, with connection counts and metadata as it was at join; ``limit``."""
    broker = await kit.start(RecordingNode())
    meta: dict[str, Any] = {"status": "here"}
    await broker.presence_join("lobby", "bob", "c1", meta)
    meta["status"] = "changed after the join"
    await broker.presence_join("lobby", "alice", "c2", {"a": 1, "tags": [], "s": "h\u00e9"})
    await broker.presence_join("lobby", "alice", "c3", {"b": None})
    await broker.presence_join("kitchen", "carol", "c4", {})
    listing = await broker.presence_members("lobby")
    assert (listing.count, listing.connections, listing.names) == (2, 3, ["alice", "bob"])
    assert listing.members == (
        Member("alice", 2, {"a": 1, "tags": [], "s": "h\u00e9", "b": None}),
        Member("bob", 1, {"status": "here"}),
    )
    names = await broker.presence_members("lobby", 2, meta=False)
    assert names == RoomPresence(2, 3, (Member("alice", 2, {}), Member("bob", 1, {})))
    assert await broker.presence_members("lobby", 1) == RoomPresence(2, 3, ())
    assert await broker.presence_members("lobby", 0, meta=False) == RoomPresence(2, 3, ())
    assert await broker.presence_members("empty") == RoomPresence(0, 0, ())
    assert await broker.presence_rooms() == [("kitchen", 1), ("lobby", 2)]


async def check_presence_decides_first_and_last_once_under_concurrency(kit: BrokerKit) -> None:
    """20 concurrent joins of one member: one first; 20 concurrent leaves: one last."""
    broker = await kit.start(RecordingNode())
    joins = await asyncio.gather(
        *(broker.presence_join("r", "ann", f"c{i}", {"i": i}) for i in range(20))
    )
    assert sum(update.changed for update in joins) == 1
    listing = await broker.presence_members("r")
    assert listing.members[0].user == "ann" and listing.members[0].connections == 20
    leaves = await asyncio.gather(*(broker.presence_leave("r", f"c{i}") for i in range(20)))
    assert sum(update.changed for update in leaves) == 1
    assert [update.member for update in leaves] == ["ann"] * 20
    assert await broker.presence_rooms() == []


CHECKS: list[Callable[[BrokerKit], Awaitable[None]]] = [
    check_send_reaches_the_node_once,
    check_publish_numbers_densely_under_concurrency,
    check_publish_targets_its_channel,
    check_publication_fields_survive_the_history,
    check_position_and_independent_channels,
    check_recovery_answers,
    check_history_size_limit,
    check_history_size_zero_counts_but_keeps_nothing,
    check_history_ttl_limit,
    check_new_epoch_after_history_loss,
    check_close_stops_delivery,
    check_healthy_and_probe_when_up,
    check_presence_first_join_and_last_leave,
    check_presence_lists_members_with_meta,
    check_presence_decides_first_and_last_once_under_concurrency,
]


def check_ids() -> list[Any]:
    """pytest params for CHECKS, named after each check."""
    return [pytest.param(check, id=check.__name__.removeprefix("check_")) for check in CHECKS]
