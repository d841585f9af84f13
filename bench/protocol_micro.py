"""Micro-benchmark of the sans-I/O cores: tidewire vs websockets, same bytes, same process.

Receive: parse + unmask + UTF-8 validate + deliver N masked client text frames,
fed in 64 KiB reads (as a socket would deliver them).  Send: frame N server
text messages.  No compression.  Prints a table of messages/s and MB/s and the
ratio tidewire / websockets; run with `python bench/protocol_micro.py`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol as WsProtocol
from websockets.protocol import Side as WsSide
from websockets.protocol import State as WsState

from tidewire.protocol import Connection, Side
from tidewire.protocol._accel import HAS_SPEEDUPS

READ_SIZE = 64 * 1024
SIZES = {"64 B": 64, "4 KiB": 4096, "1 MiB": 1 << 20}


def client_stream(size: int, count: int) -> bytes:
    """``count`` masked text frames of ``size`` ASCII bytes, as a client sends them."""
    client = Connection(Side.CLIENT, max_message_size=None)
    text = ("tidewire" * (size // 8 + 1))[:size]
    for _ in range(count):
        client.send_text(text)
    return client.data_to_send()


def chunks(data: bytes) -> list[bytes]:
    """Split ``data`` into socket-sized reads."""
    return [data[i : i + READ_SIZE] for i in range(0, len(data), READ_SIZE)]


def recv_tidewire(reads: list[bytes], count: int) -> None:
    """Feed every read to a tidewire server connection and take the events."""
    conn = Connection(Side.SERVER, max_message_size=None)
    got = 0
    for data in reads:
        conn.receive_data(data)
        got += len(conn.events_received())
    assert got == count, (got, count)


def recv_websockets(reads: list[bytes], count: int) -> None:
    """Feed every read to a websockets server protocol and take the events."""
    proto = WsProtocol(WsSide.SERVER, state=WsState.OPEN, max_size=None)
    got = 0
    for data in reads:
        proto.receive_data(data)
        for event in proto.events_received():
            if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                event.data.decode()  # websockets leaves decoding to its I/O layer
                got += 1
    assert got == count, (got, count)


def send_tidewire(text: str, count: int) -> None:
    """Frame ``count`` server text messages with tidewire."""
    conn = Connection(Side.SERVER, max_message_size=None)
    for _ in range(count):
        conn.send_text(text)
        conn.data_to_send()


def send_websockets(text: str, count: int) -> None:
    """Frame ``count`` server text messages with websockets."""
    proto = WsProtocol(WsSide.SERVER, state=WsState.OPEN, max_size=None)
    for _ in range(count):
        proto.send_text(text.encode())
        proto.data_to_send()


def rate(fn: Callable[[], None], count: int) -> float:
    """Messages per second of one timed run of ``fn``."""
    start = time.perf_counter()
    fn()
    return count / (time.perf_counter() - start)


def main() -> None:
    """Run every size both ways and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    print(f"C accelerator: {'yes' if HAS_SPEEDUPS else 'no'}; median of {args.repeat} runs")
    print(
        f"| {'direction':9} | {'size':6} | {'tidewire msg/s':>15} | {'websockets msg/s':>16} "
        f"| {'tidewire MB/s':>13} | {'ratio':>6} |"
    )
    print("|-----------|--------|-----------------|------------------|---------------|--------|")
    for label, size in SIZES.items():
        count = max(20, min(100_000, (64 << 20) // size))
        reads = chunks(client_stream(size, count))
        text = ("tidewire" * (size // 8 + 1))[:size]
        pairs = (
            (
                "receive",
                partial(recv_tidewire, reads, count),
                partial(recv_websockets, reads, count),
            ),
            ("send", partial(send_tidewire, text, count), partial(send_websockets, text, count)),
        )
        for direction, tw, ws in pairs:
            # interleave the two implementations so drift hits both alike
            tw_rates, ws_rates = [], []
            for _ in range(args.repeat):
                tw_rates.append(rate(tw, count))
                ws_rates.append(rate(ws, count))
            tw_rate, ws_rate = statistics.median(tw_rates), statistics.median(ws_rates)
            print(
                f"| {direction:9} | {label:6} | {tw_rate:15,.0f} | {ws_rate:16,.0f} "
                f"| {tw_rate * size / 1e6:13,.0f} | {tw_rate / ws_rate:5.2f}x |"
            )


if __name__ == "__main__":
    main()
