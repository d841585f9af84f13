"""``tidewire serve``: the chat application (web UI at ``/``, WebSocket at ``/ws``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import Any

from tidewire.apps.chat import MessageStore, build_app
from tidewire.apps.chat.web import add_routes

__all__ = ["register", "run", "DEFAULT_DB"]

#: Where the chat keeps its history unless --db says otherwise.
DEFAULT_DB = "tidewire-chat.sqlite3"


def register(sub: Any) -> None:
    """Add the ``serve`` subcommand."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "serve", help="run the chat server (web UI at /, WebSocket at /ws)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--db", default=DEFAULT_DB, help=f"SQLite file for history (default {DEFAULT_DB})"
    )
    parser.add_argument(
        "--broker",
        default="memory",
        help="'memory' (default: one process); a redis:// URL shares rooms across processes",
    )
    parser.add_argument("--workers", type=int, default=1, help="processes on one port")
    parser.set_defaults(func=run)


async def _serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()

    def request_stop() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, request_stop)
    store = MessageStore(args.db)
    app = build_app(store)
    add_routes(app)
    server = await app.serve(args.host, args.port)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"tidewire chat on http://{host}:{server.port}/", flush=True)
    try:
        await stop
    finally:
        await server.shutdown()
        await app.close()
        store.close()


def run(args: argparse.Namespace) -> int:
    """Run the chat server until Ctrl-C or SIGTERM; returns the exit status."""
    if args.broker != "memory" or args.workers != 1:
        print(
            "error: --workers > 1 and --broker redis:// need the Redis broker, which is not "
            "part of this build yet; run one process with --broker memory",
            file=sys.stderr,
        )
        return 2
    asyncio.run(_serve(args))
    return 0
