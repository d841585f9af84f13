"""Middleware: async callables run in order around every client message.

A middleware is ``async def mw(ctx, call_next)``: it may read or replace
``ctx.message`` and then ``await call_next()``, or raise
:class:`~tidewire.errors.Rejected` (or any RealtimeError) to stop the message;
the client then gets an ``error`` reply with that code.  Not calling
``call_next`` drops the message silently.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tidewire.realtime.context import Context

__all__ = ["Middleware", "Next", "run_chain"]

Next = Callable[[], Awaitable[Any]]
Middleware = Callable[["Context", Next], Awaitable[Any]]


async def run_chain(
    chain: Sequence[Middleware], ctx: Context, endpoint: Callable[[Context], Awaitable[Any]]
) -> Any:
    """Run ``chain`` in order, then ``endpoint(ctx)``; returns what the endpoint returned."""
    if not chain:
        return await endpoint(ctx)

    async def step(index: int) -> Any:
        if index == len(chain):
            return await endpoint(ctx)
        return await chain[index](ctx, lambda: step(index + 1))

    return await step(0)
