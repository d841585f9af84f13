"""``tidewire serve``: the chat application (web UI at ``/``, WebSocket at ``/ws``).

One process by default, on the in-memory broker.  ``--workers N`` starts N
processes on the same port (SO_REUSEPORT: the kernel spreads connections
over them); they share rooms, channels and history through ``--broker
redis://...``, which is required when N > 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from typing import Any

from tidewire.apps.chat import HistoryStore, MessageStore, RedisMessageStore, build_app
from tidewire.apps.chat.web import add_routes
from tidewire.apps.cli.signals import stop_requested
from tidewire.realtime.brokers import Broker, MemoryBroker

__all__ = ["register", "run", "DEFAULT_DB", "make_broker"]

#: Where the chat keeps its history unless --db says otherwise.
DEFAULT_DB = "tidewire-chat.sqlite3"
#: Seconds the parent waits for workers to drain after SIGTERM before killing them.
WORKER_STOP_TIMEOUT = 15.0


def register(sub: Any) -> None:
    """Add the ``serve`` subcommand."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "serve", help="run the chat server (web UI at /, WebSocket at /ws)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--db",
        default=DEFAULT_DB,
        help=f"SQLite file for history (default {DEFAULT_DB}; with --broker redis:// "
        "the history is kept in Redis instead, shared by every node)",
    )
    parser.add_argument(
        "--broker",
        default="memory",
        help="'memory' (default: one process) or a redis:// URL shared by workers and nodes",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="processes on one port (needs --broker redis://)"
    )
    parser.add_argument(
        "--admin-token",
        default=os.environ.get("TIDEWIRE_ADMIN_TOKEN"),
        help="enables /stats, /metrics, /debug and /api/* behind this bearer token "
        "(default: $TIDEWIRE_ADMIN_TOKEN; unset: those endpoints answer 404)",
    )
    parser.add_argument("--worker-id", type=int, default=None, help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def make_broker(url: str, *, history_size: int = 100) -> Broker:
    """The broker for ``--broker``: ``memory`` or a ``redis://`` / ``rediss://`` URL."""
    if url == "memory":
        return MemoryBroker(history_size=history_size)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from tidewire.realtime.brokers import RedisBroker

        return RedisBroker(url, history_size=history_size)
    raise ValueError(f"--broker must be 'memory' or a redis:// URL, not {url!r}")


async def _serve(args: argparse.Namespace) -> None:
    stop = stop_requested()
    # With a shared broker every node must show the same history: keep it in Redis.
    store: HistoryStore = (
        MessageStore(args.db) if args.broker == "memory" else RedisMessageStore(args.broker)
    )
    app = build_app(store, broker=make_broker(args.broker), admin_token=args.admin_token)
    add_routes(app)
    server = await app.serve(args.host, args.port, reuse_port=args.worker_id is not None)
    host = f"[{args.host}]" if ":" in args.host else args.host
    who = f"worker {args.worker_id} (pid {os.getpid()})" if args.worker_id is not None else "chat"
    print(f"tidewire {who} on http://{host}:{server.port}/", flush=True)
    try:
        await stop
    finally:
        await server.shutdown()
        await app.close()
        await store.aclose()


def _run_workers(args: argparse.Namespace) -> int:
    """Start ``--workers`` processes on one port; forward SIGINT/SIGTERM; wait for them."""
    base = [sys.executable, "-m", "tidewire", "serve", "--host", args.host]
    base += ["--port", str(args.port), "--db", args.db, "--broker", args.broker]
    env = dict(os.environ)
    if args.admin_token:
        env["TIDEWIRE_ADMIN_TOKEN"] = args.admin_token  # not on the command line: ps shows it
    procs = [
        subprocess.Popen([*base, "--worker-id", str(i)], start_new_session=True, env=env)
        for i in range(args.workers)
    ]
    stopping = False

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    status = 0
    try:
        while any(proc.poll() is None for proc in procs):
            if not stopping and any(proc.poll() is not None for proc in procs):
                # A worker died on its own: stop the rest rather than limp on silently.
                print("tidewire: a worker exited; stopping the others", file=sys.stderr)
                status = 1
                forward(signal.SIGTERM, None)
            time.sleep(0.1)
    finally:
        deadline = time.monotonic() + WORKER_STOP_TIMEOUT
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return status


def run(args: argparse.Namespace) -> int:
    """Run the chat server until Ctrl-C or SIGTERM; returns the exit status."""
    if args.workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return 2
    if args.workers > 1 and args.broker == "memory":
        print(
            "error: --workers > 1 needs a shared broker: add --broker redis://HOST:PORT "
            "(workers on the in-memory broker would not see each other's rooms)",
            file=sys.stderr,
        )
        return 2
    if args.workers > 1 and args.port == 0:
        print("error: --workers > 1 needs a fixed --port", file=sys.stderr)
        return 2
    try:
        make_broker(args.broker)
    except (ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.workers > 1:
        return _run_workers(args)
    asyncio.run(_serve(args))
    return 0
