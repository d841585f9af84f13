"""``tidewire connect``: the CLI run as a subprocess against servers started in the test."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

import tidewire
from tidewire.apps.cli.connect import (
    HEX_PREVIEW_BYTES,
    describe_close,
    exit_status,
    format_received,
    normalize_url,
    parse_header,
)
from tidewire.transport import Router, WebSocket

CLI = [sys.executable, "-m", "tidewire", "connect"]
#: Seconds any one CLI run may take before the test kills it and fails.
TIMEOUT = 15.0
STAMP = r"\d\d:\d\d:\d\d\.\d{3}"
ENV = {**os.environ, "PYTHONUTF8": "1"}


@dataclass
class Result:
    """What one CLI run produced."""

    code: int
    out: str
    err: str


@dataclass
class Recorder:
    """An echo server handler that records what each connection's handshake carried."""

    headers: list[dict[str, str]] = field(default_factory=list)
    subprotocols: list[str | None] = field(default_factory=list)
    close_codes: list[int | None] = field(default_factory=list)
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    async def handler(self, ws: WebSocket) -> None:
        """Record the handshake; /fail closes with 1011, anything else echoes."""
        assert ws.request is not None
        self.headers.append({name.lower(): value for name, value in ws.request.headers})
        self.subprotocols.append(ws.subprotocol)
        if ws.request.path_only == "/fail":
            await ws.close(1011, "boom")
        else:
            async for message in ws:
                await ws.send(message)
        self.close_codes.append(ws.close_code)
        self.finished.set()


@dataclass
class Running:
    """A server started for one test, and its recorder."""

    url: str
    rec: Recorder


@pytest.fixture
async def server() -> AsyncIterator[Running]:
    """An echo server on a free loopback port that offers the subprotocol `chat`."""
    rec = Recorder()
    async with tidewire.serve(rec.handler, "127.0.0.1", 0, subprotocols=["chat"]) as srv:
        yield Running(srv.url, rec)


async def spawn(*args: str) -> asyncio.subprocess.Process:
    """Start `tidewire connect ARGS` with all three standard streams piped."""
    return await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=ENV,
    )


async def finish(proc: asyncio.subprocess.Process, stdin: bytes | None = None) -> Result:
    """Close stdin (after writing ``stdin``), collect the output; kill past TIMEOUT."""
    if stdin is None and proc.stdin is not None:
        proc.stdin.close()  # communicate(None) would leave it open
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def run_cli(*args: str, stdin: bytes = b"") -> Result:
    """Run `tidewire connect ARGS` to completion."""
    return await finish(await spawn(*args), stdin)


async def read_line(stream: asyncio.StreamReader | None) -> str:
    """One line of a subprocess's output, within TIMEOUT."""
    assert stream is not None
    return (await asyncio.wait_for(stream.readline(), TIMEOUT)).decode()


# ------------------------------------------------------------- pure helpers


def test_parse_header() -> None:
    """`Name: value` splits at the first colon and strips blanks; no name is a usage error."""
    assert parse_header("X-Token:  a:b ") == ("X-Token", "a:b")
    for bad in ("novalue", ": x", "Bad Name: x"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_header(bad)


def test_normalize_url() -> None:
    """A URL without a scheme gets ws://; http and https map to ws and wss."""
    assert normalize_url("localhost:9001/x") == "ws://localhost:9001/x"
    assert normalize_url("https://example.test/") == "wss://example.test/"
    assert normalize_url("WS://h/") == "ws://h/"


def test_describe_close() -> None:
    """The close line names the code and quotes a reason, for registered and private codes."""
    assert describe_close(1000, "bye") == 'closed: 1000 (normal closure) "bye"'
    assert describe_close(1011, "") == "closed: 1011 (internal error)"
    assert describe_close(None, None) == "closed: 1006 (abnormal closure)"
    assert describe_close(1005, "") == "closed: 1005 (no status received)"
    assert describe_close(4999, "x") == 'closed: 4999 (private use) "x"'
    assert describe_close(3001, "") == "closed: 3001 (registered)"


def test_exit_status() -> None:
    """1000, 1001 and 1005 exit 0; abnormal closes exit 1."""
    assert [exit_status(c) for c in (1000, 1001, 1005)] == [0, 0, 0]
    assert [exit_status(c) for c in (1006, 1011, 4500, None)] == [1, 1, 1, 1]


def test_format_received() -> None:
    """Binary shows its size and a bounded hex preview; --json pretty-prints JSON only."""
    assert format_received(b"hello") == "[binary 5 bytes] 68656c6c6f"
    assert format_received(b"") == "[binary 0 bytes]"
    long = format_received(bytes(range(40)))
    assert long == f"[binary 40 bytes] {bytes(range(HEX_PREVIEW_BYTES)).hex()}…"
    assert format_received('{"a":1}', pretty_json=True) == '{\n  "a": 1\n}'
    assert format_received("not json", pretty_json=True) == "not json"
    assert format_received('{"a":1}') == '{"a":1}'


# --------------------------------------------------------------- -x one-shot


async def test_execute_round_trip(server: Running) -> None:
    """-x sends each message, prints each echo with a time stamp, and closes with 1000."""
    res = await run_cli(server.url, "-x", "hello", "-x", "world", "-n", "2", "-w", "10")
    assert res.code == 0, res.err
    lines = res.out.splitlines()
    assert len(lines) == 2, res.out
    assert re.fullmatch(rf"{STAMP} < hello", lines[0])
    assert re.fullmatch(rf"{STAMP} < world", lines[1])
    assert "closed: 1000 (normal closure)" in res.err
    await asyncio.wait_for(server.rec.finished.wait(), TIMEOUT)
    assert server.rec.close_codes == [1000]


async def test_execute_waits_then_closes(server: Running) -> None:
    """Without --count, -x waits --wait seconds for replies before closing."""
    started = time.monotonic()
    res = await run_cli(server.url, "-x", "hi", "-w", "0.3")
    assert res.code == 0, res.err
    assert time.monotonic() - started >= 0.3
    assert res.out.endswith("< hi\n")


async def test_json_pretty_prints(server: Running) -> None:
    """--json pretty-prints a JSON text message and prints other text as it came."""
    doc = '{"a": [1, 2], "b": "é"}'
    res = await run_cli(server.url, "--json", "-x", doc, "-x", "plain {", "-n", "2", "-w", "10")
    assert res.code == 0, res.err
    assert '< {\n  "a": [\n    1,\n    2\n  ],\n  "b": "é"\n}\n' in res.out
    assert res.out.endswith("< plain {\n")


async def test_binary_display(server: Running) -> None:
    """A binary message is shown with its size and a truncated hex preview."""
    message = "abcdefghijklmnopqrstuvwxyz0123456789ABCD"
    res = await run_cli(server.url, "--binary", "-x", message, "-n", "1", "-w", "10")
    assert res.code == 0, res.err
    preview = message.encode()[:HEX_PREVIEW_BYTES].hex()
    assert re.fullmatch(rf"{STAMP} < \[binary 40 bytes\] {preview}…\n", res.out)


async def test_header_subprotocol_and_origin_reach_server(server: Running) -> None:
    """--header (repeated), --subprotocol and --origin arrive in the opening request."""
    res = await run_cli(
        server.url,
        *("-H", "X-Token: abc", "--header", "X-Trace: 1"),
        *("--subprotocol", "nope", "-s", "chat"),
        *("--origin", "https://example.test"),
        *("-x", "hi", "-n", "1", "-w", "10"),
    )
    assert res.code == 0, res.err
    (headers,) = server.rec.headers
    assert headers["x-token"] == "abc"
    assert headers["x-trace"] == "1"
    assert headers["sec-websocket-protocol"] == "nope, chat"
    assert headers["origin"] == "https://example.test"
    assert server.rec.subprotocols == ["chat"]


async def test_verbose_shows_handshake_and_pong(server: Running) -> None:
    """--verbose prints the request, the 101 response, compression, the pong RTT, sent lines."""
    res = await run_cli(server.url, "-v", "-x", "hi", "-n", "1", "-w", "10")
    assert res.code == 0, res.err
    assert "> GET / HTTP/1.1" in res.err
    assert "< HTTP/1.1 101 Switching Protocols" in res.err
    assert "subprotocol: none" in res.err
    assert "compression: on (permessage-deflate" in res.err
    assert re.search(rf"{STAMP} pong: round trip \d+\.\d{{3}} ms", res.err), res.err
    assert re.search(rf"{STAMP} > hi\n{STAMP} < hi\n", res.out), res.out


async def test_no_compression_and_ping_interval(server: Running) -> None:
    """--no-compression offers no extension; --ping-interval pings repeatedly, RTT shown."""
    res = await run_cli(
        server.url, "-v", "--no-compression", "--ping-interval", "0.05", "-x", "hi", "-w", "0.5"
    )
    assert res.code == 0, res.err
    assert "permessage-deflate" not in res.err
    assert "compression: off" in res.err
    assert len(re.findall(r"pong: round trip", res.err)) >= 3, res.err


# -------------------------------------------------------------- interactive


async def test_interactive_stdin(server: Running) -> None:
    """Lines typed on stdin go out as messages; closing stdin closes with 1000 and exits 0."""
    proc = await spawn(server.url)
    assert (await read_line(proc.stderr)).startswith(f"connected to {server.url}")
    assert proc.stdin is not None
    proc.stdin.write(b"first\nsecond line\r\n")
    await proc.stdin.drain()
    assert re.fullmatch(rf"{STAMP} < first\n", await read_line(proc.stdout))
    assert re.fullmatch(rf"{STAMP} < second line\n", await read_line(proc.stdout))
    res = await finish(proc)
    assert res.code == 0, res.err
    assert res.err.endswith("closed: 1000 (normal closure)\n")
    await asyncio.wait_for(server.rec.finished.wait(), TIMEOUT)
    assert server.rec.close_codes == [1000]


async def test_sigint_closes_cleanly(server: Running) -> None:
    """Ctrl-C (SIGINT) in interactive mode closes with 1000 and exits 0, no traceback."""
    proc = await spawn(server.url)
    assert (await read_line(proc.stderr)).startswith("connected to")
    proc.send_signal(signal.SIGINT)
    await asyncio.wait_for(proc.wait(), TIMEOUT)  # stdin still open: the signal alone ends it
    res = await finish(proc)
    assert res.code == 0, res.err
    assert "Traceback" not in res.err
    assert "closed: 1000 (normal closure)" in res.err
    await asyncio.wait_for(server.rec.finished.wait(), TIMEOUT)
    assert server.rec.close_codes == [1000]


# ----------------------------------------------------------------- failures


async def test_server_close_1011_exits_nonzero(server: Running) -> None:
    """A server closing with 1011 ends the session at once: code and reason printed, exit 1."""
    started = time.monotonic()
    res = await run_cli(server.url + "fail", "-x", "hi", "-w", "10")
    assert res.code == 1, res.err
    assert 'closed: 1011 (internal error) "boom"' in res.err
    assert time.monotonic() - started < 10


async def test_handshake_404_exits_2() -> None:
    """A server answering 404 instead of 101: the status is printed, exit 2, no traceback."""
    router = Router()
    router.add_websocket("/ws", Recorder().handler)
    async with tidewire.serve(router, "127.0.0.1", 0) as srv:
        res = await run_cli(srv.url + "nope", "-x", "hi")
    assert res.code == 2
    assert "error: server answered 404 Not Found" in res.err
    assert "Traceback" not in res.err


async def test_connection_refused_exits_2() -> None:
    """Nothing listening on the port: a clear message and exit 2."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    res = await run_cli(f"ws://127.0.0.1:{port}/", "-x", "hi")
    assert res.code == 2
    assert f"error: connection refused by 127.0.0.1:{port}" in res.err
    assert "Traceback" not in res.err


async def test_bad_url_exits_2() -> None:
    """A URL that is not ws:// or wss:// is refused with a message, exit 2."""
    res = await run_cli("ftp://127.0.0.1/", "-x", "hi")
    assert res.code == 2
    assert "error: not a ws:// or wss:// URI" in res.err
    assert "Traceback" not in res.err


async def test_open_timeout_exits_2() -> None:
    """A server that accepts TCP but never answers the handshake: --timeout fires, exit 2."""
    held: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    srv = await asyncio.start_server(silent, "127.0.0.1", 0)
    async with srv:
        port = srv.sockets[0].getsockname()[1]
        res = await run_cli(f"ws://127.0.0.1:{port}/", "--timeout", "0.3", "-x", "hi")
        for writer in held:
            writer.close()
    assert res.code == 2
    assert "timed out after open_timeout=0.3s" in res.err
    assert "Traceback" not in res.err


async def test_wss_untrusted_then_insecure() -> None:
    """wss with an untrusted certificate fails with exit 2; --insecure connects anyway."""
    trustme = pytest.importorskip("trustme")
    cert = trustme.CA().issue_cert("localhost", "127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    async with tidewire.serve(Recorder().handler, "127.0.0.1", 0, ssl=context) as srv:
        url = f"wss://localhost:{srv.port}/"
        refused = await run_cli(url, "-x", "hi")
        insecure = await run_cli(url, "--insecure", "-x", "hi", "-n", "1", "-w", "10")
    assert refused.code == 2
    assert "not trusted" in refused.err and "--insecure" in refused.err
    assert "Traceback" not in refused.err
    assert insecure.code == 0, insecure.err
    assert insecure.out.endswith("< hi\n")
