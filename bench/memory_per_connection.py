"""Server memory per open WebSocket connection (RSS delta / connections).

Starts ``tidewire echo`` in a subprocess, opens N connections from this
process with raw sockets (a plain handshake, optionally offering
permessage-deflate and echoing one 200-byte text message so that both zlib
objects exist), and reads the server's VmRSS before and after.
Usage: python bench/memory_per_connection.py [-n 1000]
"""

from __future__ import annotations

import argparse
import base64
import os
import socket
import subprocess
import sys
import time

from tidewire.protocol.connection import Connection, Side


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def open_connection(port: int, deflate: bool) -> socket.socket:
    """A raw WebSocket connection (handshake done; one echo if deflate)."""
    sock = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    ext = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    sock.sendall(
        (
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"{ext if deflate else ''}\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head[:80]
    if deflate:
        client = Connection(Side.CLIENT)
        client.send_text('{"type":"chat","text":"' + "hello " * 30 + '"}')
        sock.sendall(client.data_to_send())
        sock.recv(4096)
    return sock


def measure(count: int, deflate: bool) -> float:
    """KiB of server RSS per connection."""
    port_sock = socket.socket()
    port_sock.bind(("127.0.0.1", 0))
    port = port_sock.getsockname()[1]
    port_sock.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tidewire", "echo", "--port", str(port)], stdout=subprocess.DEVNULL
    )
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                time.sleep(0.05)
        warm = [open_connection(port, deflate) for _ in range(50)]
        time.sleep(0.5)
        before = rss_kib(proc.pid)
        socks = [open_connection(port, deflate) for _ in range(count)]
        time.sleep(1.0)
        after = rss_kib(proc.pid)
        for sock in socks + warm:
            sock.close()
        return (after - before) / count
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    """Print KiB per connection without and with permessage-deflate in use."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=1000)
    args = parser.parse_args()
    print(f"idle connection, no compression: {measure(args.n, False):.1f} KiB")
    print(f"connection with permessage-deflate in use: {measure(args.n, True):.1f} KiB")


if __name__ == "__main__":
    main()
