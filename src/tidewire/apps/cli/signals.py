"""Stopping a command on Ctrl-C or SIGTERM, the same way for every subcommand."""

from __future__ import annotations

import asyncio
import contextlib
import signal

__all__ = ["stop_requested"]


def stop_requested() -> asyncio.Future[None]:
    """A future that completes on the first SIGINT or SIGTERM (call inside the running loop)."""
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()

    def request_stop() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, request_stop)
    return stop
