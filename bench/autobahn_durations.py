"""Summed Autobahn case durations: tidewire echo vs the websockets 17.4 echo server.

Runs kosoku's fuzzingclient over the performance (9.*) and compression (12.*,
13.*) cases against both servers, interleaved per group, each server pinned to
core 0 and kosoku to core 1, and prints the summed durations and their ratio.
Usage: python bench/autobahn_durations.py [--groups 9 12 13] [--rounds 1]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.compliance.kosoku_harness import (  # noqa: E402
    failures,
    run_fuzzingclient,
    sum_durations,
)

WEBSOCKETS_ECHO = """
import asyncio, sys
from websockets.asyncio.server import serve
async def echo(ws):
    async for message in ws:
        await ws.send(message)
async def main():
    async with serve(echo, "127.0.0.1", int(sys.argv[1]), max_size=2**24, ping_interval=None):
        await asyncio.Future()
asyncio.run(main())
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start(name: str, port: int) -> subprocess.Popen[bytes]:
    """Start one echo server on core 0 and wait until it accepts connections."""
    if name == "tidewire":
        cmd = [sys.executable, "-m", "tidewire", "echo", "--port", str(port)]
    else:
        cmd = [sys.executable, "-c", WEBSOCKETS_ECHO, str(port)]
    proc = subprocess.Popen(["taskset", "-c", "0", *cmd], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{name} echo server did not start")


def run(name: str, group: str, outdir: Path) -> tuple[int, int]:
    """Summed duration (ms) of one case group against one server, and its failures."""
    port = free_port()
    proc = start(name, port)
    try:
        results = run_fuzzingclient(
            f"127.0.0.1:{port}",
            outdir / f"{name}-{group}",
            include=[f"{group}.*"],
            timeout=3600,
        )
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return sum_durations(results, group), len(failures(results))


def main() -> None:
    """Run every group for both servers and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--groups", nargs="+", default=["9", "12", "13"])
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    totals: dict[tuple[str, str], list[int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for group in args.groups:
                for name in ("tidewire", "websockets"):
                    ms, failed = run(name, group, Path(tmp))
                    totals.setdefault((name, group), []).append(ms)
                    print(
                        f"{name:10} {group:>3}.*: {ms / 1000:8.1f} s ({failed} failed)", flush=True
                    )
    print("\n| cases | tidewire (s) | websockets (s) | tidewire / websockets |")
    print("|---|---|---|---|")
    for group in args.groups:
        tw = sorted(totals[("tidewire", group)])[len(totals[("tidewire", group)]) // 2]
        ws = sorted(totals[("websockets", group)])[len(totals[("websockets", group)]) // 2]
        print(f"| {group}.* | {tw / 1000:.1f} | {ws / 1000:.1f} | {tw / ws:.2f} |")


if __name__ == "__main__":
    main()
