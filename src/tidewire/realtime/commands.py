"""The reserved client message types of docs/protocol.md and the built-in RPC methods."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from tidewire.errors import RealtimeError, Rejected
from tidewire.realtime.wire import check_name

if TYPE_CHECKING:
    from tidewire.realtime.context import Context

__all__ = ["COMMANDS", "BUILTIN_RPCS"]

Command = Callable[["Context"], Awaitable[Any]]


async def join(ctx: Context) -> None:
    """``join`` -> ``joined`` with members; the other users get ``userJoined``."""
    await ctx.app.join(ctx.session, ctx.message["room"], ref=ctx.message.get("id"))


async def leave(ctx: Context) -> None:
    """``leave`` -> ``left``; the other users get ``userLeft`` when it was the user's last."""
    room = ctx.message["room"]
    if room not in ctx.session.rooms:
        raise RealtimeError(f"not in room {room!r}", "not_member")
    await ctx.app.leave(ctx.session, room)
    ctx.reply("left", room=room)


async def subscribe(ctx: Context) -> None:
    """``subscribe`` -> ``subscribed`` (with missed publications when ``since`` was given)."""
    app, session, message = ctx.app, ctx.session, ctx.message
    channel = message["channel"]
    if channel not in session.channels:
        limit = app.options.max_channels_per_connection
        if len(session.channels) >= limit:
            raise RealtimeError(f"at most {limit} channels per connection", "limit")
        await app.authorize(session, channel, "subscribe")
    # Subscribe before asking the broker, holding live publications back: one
    # published while the broker answers would otherwise be in neither the
    # reply nor the live stream (a gap), or in both (a duplicate).
    hub, new = app.hub, channel not in session.channels
    hub.subscribe(session, channel)
    hub.hold(session, channel)
    reply: dict[str, Any] = {"channel": channel}
    since = message.get("since")
    now = app.clock()
    try:
        if since is not None:
            recovery = await app.broker.recover(channel, since["epoch"], since["offset"], now)
            reply["epoch"], reply["offset"] = recovery.epoch, recovery.offset
            reply["recovered"] = recovery.recovered
            reply["publications"] = [pub.envelope() for pub in recovery.publications]
        else:
            reply["epoch"], reply["offset"] = await app.broker.position(channel, now)
    except BaseException:
        held = hub.release(session, channel)
        if new:
            hub.unsubscribe(session, channel)
        else:
            for text in held:
                session.send(text)
        raise
    ctx.reply("subscribed", **reply)
    for text in hub.release(session, channel, after=reply["offset"]):
        session.send(text)


async def unsubscribe(ctx: Context) -> None:
    """``unsubscribe`` -> ``unsubscribed``."""
    channel = ctx.message["channel"]
    ctx.app.hub.unsubscribe(ctx.session, channel)
    ctx.reply("unsubscribed", channel=channel)


async def publish(ctx: Context) -> None:
    """``publish`` -> every subscriber gets it with its offset; ``published`` when ``id`` given."""
    app, channel = ctx.app, ctx.message["channel"]
    await app.authorize(ctx.session, channel, "publish")
    pub = await ctx.publish(channel, ctx.message["payload"])
    if "id" in ctx.message:
        ctx.reply("published", channel=channel, offset=pub.offset)


COMMANDS: dict[str, Command] = {
    "join": join,
    "leave": leave,
    "subscribe": subscribe,
    "unsubscribe": unsubscribe,
    "publish": publish,
}


async def rooms_list(ctx: Context, params: Any) -> list[dict[str, Any]]:
    """``rooms.list``: the rooms the caller may see, with member counts on every node."""
    app = ctx.app
    rooms = []
    for name, count in await app.broker.presence_rooms():
        if await app.may_see(ctx.session, name):
            rooms.append({"room": name, "members": count})
    return rooms


async def presence(ctx: Context, params: Any) -> list[dict[str, Any]]:
    """``presence`` with ``{"room": R}``: members on every node, connection counts, metadata."""
    if not isinstance(params, dict):
        raise RealtimeError("params must be {room: name}", "invalid_params")
    room = params.get("room")
    try:
        check_name(room, "room")
    except RealtimeError as exc:
        raise RealtimeError(str(exc), "invalid_params") from None
    assert isinstance(room, str)
    if not await ctx.app.may_see(ctx.session, room):
        raise Rejected(f"not allowed to see room {room!r}", "forbidden")
    listing = await ctx.app.broker.presence_members(room)
    return [member.as_dict() for member in listing.members]


BUILTIN_RPCS: dict[str, Callable[[Context, Any], Awaitable[Any]]] = {
    "rooms.list": rooms_list,
    "presence": presence,
}
