"""Event callbacks of a Client: registration, ordered invocation, failures reported.

Plain callbacks run at once, in the caller (the reader, in arrival order);
async ones are started as tasks in that order, so a callback may await a
request without blocking the reader.  A failing callback is logged and
reported as an ``"error"`` event (never recursively).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

__all__ = ["Callback", "Emitter"]

logger = logging.getLogger("tidewire.realtime.client")

#: An event callback, plain or async; its arguments depend on the event.
Callback: TypeAlias = Callable[..., Any]


class Emitter:
    """Callbacks by event name, and the tasks started for async ones."""

    __slots__ = ("_listeners", "_tasks")

    def __init__(self) -> None:
        """No callbacks and no tasks yet."""
        self._listeners: dict[str, list[Callback]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def on(self, event: str, callback: Callback) -> Callback:
        """Call ``callback`` on every ``event`` from now on; return it."""
        self._listeners.setdefault(event, []).append(callback)
        return callback

    def off(self, event: str, callback: Callback) -> None:
        """Stop calling ``callback`` on ``event`` (no error when it was not registered)."""
        callbacks = self._listeners.get(event)
        if callbacks and callback in callbacks:
            callbacks.remove(callback)

    def emit(self, event: str, *args: Any) -> None:
        """Call every callback of ``event`` with ``args``."""
        for callback in list(self._listeners.get(event, ())):
            self.invoke(callback, args, event)

    def invoke(self, callback: Callback, args: tuple[Any, ...], what: str) -> None:
        """Run a callback: plain ones now, async ones as a task; failures go to "error"."""
        try:
            result = callback(*args)
        except Exception as exc:
            self._callback_failed(what, exc)
            return
        if inspect.isawaitable(result):
            task = self.spawn(result)
            task.add_done_callback(lambda t: self._task_done(t, what))

    def spawn(self, awaitable: Awaitable[Any]) -> asyncio.Task[Any]:
        """Run ``awaitable`` as a task, referenced until it is done."""
        task = asyncio.ensure_future(awaitable)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _task_done(self, task: asyncio.Task[Any], what: str) -> None:
        if not task.cancelled() and isinstance(task.exception(), Exception):
            exc = task.exception()
            assert isinstance(exc, Exception)
            self._callback_failed(what, exc)

    def _callback_failed(self, what: str, exc: Exception) -> None:
        logger.error("callback for %s failed", what, exc_info=exc)
        if what != "error":
            self.emit("error", exc)
