"""A throwaway redis-server for tests: own loopback port, no persistence, killable.

Tests never use a system Redis: each server here is a child process on a free
127.0.0.1 port with ``--save ''`` and ``--appendonly no``, so a kill loses every
key, exactly what a restart without persistence does in production.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

#: Seconds a starting redis-server has to accept connections.
START_TIMEOUT = 5.0
#: prctl(2) option: the signal a child gets when its parent dies (Linux).
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: SIGKILL it when the test process dies (a watchdog exit skips teardown)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unique_prefix(tag: str = "t") -> str:
    """A key prefix no other test uses (tests may share one server)."""
    return f"tw-{tag}-{uuid.uuid4().hex[:8]}:"


class RedisServer:
    """One redis-server child process on ``port``; start, kill, pause and restart it."""

    def __init__(self, port: int | None = None) -> None:
        """Pick a port; nothing runs before :meth:`start`."""
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is missing: scripts/test installs it from Debian packages")
        self.binary = binary
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The redis:// URL of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait (bounded) until it accepts connections."""
        assert self.process is None, "already running"
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} exited at start")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server on port {self.port} not up in {START_TIMEOUT} s")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL the server: every key and connection is gone at once."""
        process, self.process = self.process, None
        if process is not None:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=START_TIMEOUT)

    def restart(self) -> None:
        """Kill, then start again on the same port (an empty Redis)."""
        self.kill()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing answers (a wedged Redis)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)


@contextlib.contextmanager
def running_redis() -> Iterator[RedisServer]:
    """A started RedisServer that is killed on exit, whatever happened."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server.process.pid, signal.SIGCONT)
        server.kill()
