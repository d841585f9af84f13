"""Run every case of an Autobahn fuzzing server with tidewire's client echoing.

Usage: python tests/compliance/client.py ws://HOST:PORT [--agent NAME] [--cases N]

It asks the server for the case count, runs each case (echoing every
message back as it came), then asks the server to write its report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import tidewire
from tidewire.protocol.deflate import ClientDeflateFactory

COMPLIANCE_MAX_MESSAGE_SIZE = 16 * 1024 * 1024

# The offer Autobahn's own client makes: it also hints client_no_context_takeover,
# which the 13.2/13.5/13.6 server configurations require before they accept.
# min_size=0: kosoku's 12.x.1/13.x.1 cases fail on an uncompressed message inside
# a compressed session (a harness bug: RFC 7692 section 6 allows it), so the echo
# compresses every message.
OFFER = ClientDeflateFactory(
    client_no_context_takeover=True, client_max_window_bits=True, min_size=0
)


async def run_case(base: str, case: int, agent: str) -> None:
    """Connect for one case and echo until the server closes."""
    url = f"{base}/runCase?case={case}&agent={agent}"
    try:
        async with tidewire.connect(
            url,
            max_message_size=COMPLIANCE_MAX_MESSAGE_SIZE,
            ping_interval=None,
            open_timeout=30,
            extensions=[OFFER],
        ) as ws:
            async for message in ws:
                await ws.send(message)
    except tidewire.ConnectionClosed:
        pass
    except (OSError, TimeoutError, tidewire.TidewireError) as exc:
        print(f"case {case}: {type(exc).__name__}: {exc}", file=sys.stderr)


async def main(argv: list[str] | None = None) -> int:
    """Run all cases, then request the report; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url", help="ws://HOST:PORT of the fuzzing server")
    parser.add_argument("--agent", default="tidewire")
    parser.add_argument("--cases", type=int, default=None, help="run only the first N cases")
    args = parser.parse_args(argv)
    base = args.url.rstrip("/")
    async with tidewire.connect(f"{base}/getCaseCount", ping_interval=None) as ws:
        count = json.loads(await ws.recv())
    if args.cases is not None:
        count = min(count, args.cases)
    for case in range(1, count + 1):
        await run_case(base, case, args.agent)
    async with tidewire.connect(
        f"{base}/updateReports?agent={args.agent}", ping_interval=None, open_timeout=60
    ) as ws:
        try:
            await ws.recv()
        except tidewire.ConnectionClosed:
            pass
    print(f"ran {count} cases as agent {args.agent}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
