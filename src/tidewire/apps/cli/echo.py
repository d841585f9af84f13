"""``tidewire echo``: an echo server (text and binary, compression on, 16 MiB messages)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
from typing import Any

import tidewire
from tidewire.apps.cli.signals import stop_requested
from tidewire.transport import WebSocket

__all__ = ["register", "run", "echo_handler", "ECHO_MAX_MESSAGE_SIZE"]

#: Autobahn's 9.x cases send messages up to 16 MiB.
ECHO_MAX_MESSAGE_SIZE = 16 * 1024 * 1024


async def echo_handler(ws: WebSocket) -> None:
    """Send every message back as it came (text as text, binary as binary)."""
    async for message in ws:
        await ws.send(message)


def register(sub: Any) -> None:
    """Add the ``echo`` subcommand."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "echo", help="run an echo server (for tests and Autobahn)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--max-message-size", type=int, default=ECHO_MAX_MESSAGE_SIZE)
    parser.add_argument(
        "--compression-threshold",
        type=int,
        default=0,
        help="compress messages of at least this many bytes (default 0: all; kosoku's "
        "12.x.1 and 13.x.1 cases mishandle uncompressed messages in a compressed session)",
    )
    parser.add_argument("--uvloop", action="store_true", help="use uvloop if installed")
    parser.set_defaults(func=run)


async def _serve(args: argparse.Namespace) -> None:
    stop = stop_requested()
    server = await tidewire.serve(
        echo_handler,
        args.host,
        args.port,
        max_message_size=args.max_message_size,
        compression_threshold=args.compression_threshold,
        ping_interval=None,
    )
    print(f"tidewire echo server listening on {server.url}", flush=True)
    await stop
    await server.shutdown(spread=0.0)


def run(args: argparse.Namespace) -> int:
    """Run the echo server until Ctrl-C or SIGTERM."""
    if args.uvloop:
        importlib.import_module("uvloop").install()
    asyncio.run(_serve(args))
    return 0
