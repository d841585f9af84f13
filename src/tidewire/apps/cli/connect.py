"""``tidewire connect URL``: an interactive WebSocket client, like wscat or websocat.

Each line read on stdin goes out as a text message (``--binary``: a binary
one); each message received is printed on stdout with a time stamp.  With
``-x MSG`` the messages are sent, replies awaited for ``--wait`` seconds (or
until ``--count`` arrived) and the connection closed: a one-shot for scripts.

Received and sent messages go to stdout; the handshake dump, pings, the close
line and errors go to stderr, so stdout can be piped on.

Exit status: 0 after a normal close (1000, 1001, or 1005 without a code);
1 after any other close (1006 abnormal, 1011 internal error, ...);
2 when no connection was made (bad URL, refused, timeout, TLS, handshake
refused: the HTTP status is printed); 130 when interrupted while connecting.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import io
import json
import os
import signal
import ssl
import sys
import threading
import urllib.parse
from typing import Any, TextIO

import tidewire
from tidewire.errors import ConnectionClosed, HandshakeError, InvalidStatus
from tidewire.protocol import CloseCode
from tidewire.transport import DEFAULTS, WebSocket

__all__ = [
    "register",
    "run",
    "parse_header",
    "normalize_url",
    "describe_close",
    "format_received",
    "exit_status",
    "EXIT_OK",
    "EXIT_ABNORMAL_CLOSE",
    "EXIT_NO_CONNECTION",
    "EXIT_INTERRUPTED",
    "HEX_PREVIEW_BYTES",
    "DEFAULT_EXECUTE_WAIT",
    "FIRST_PING_TIMEOUT",
]

#: Exit status after a normal close (1000 normal closure, 1001 going away, 1005 no code).
EXIT_OK = 0
#: Exit status after an abnormal close (1006, 1011, 4xxx, ...).
EXIT_ABNORMAL_CLOSE = 1
#: Exit status when no connection was made: bad URL, refused, timeout, TLS, HTTP status.
EXIT_NO_CONNECTION = 2
#: Exit status after Ctrl-C while connecting (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130

#: Bytes of a binary message shown as hex: 32 bytes fit one 80-column line with the stamp.
HEX_PREVIEW_BYTES = 32
#: Seconds to wait for replies after the last ``-x`` message, as wscat's ``--wait`` default.
DEFAULT_EXECUTE_WAIT = 1.0
#: Seconds --verbose waits for the pong of its first ping before carrying on without it.
FIRST_PING_TIMEOUT = 5.0

#: Close codes after which the session counts as a success (RFC 6455 section 7.4.1).
_NORMAL_CODES = frozenset(
    {CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY, CloseCode.NO_STATUS_RCVD}
)
_CODE_NAMES = {
    CloseCode.NO_STATUS_RCVD: "no status received",
    CloseCode.TLS_HANDSHAKE: "TLS handshake failure",
}


# --------------------------------------------------------------- pure helpers


def parse_header(text: str) -> tuple[str, str]:
    """Split ``"Name: value"`` into a pair; ``argparse.ArgumentTypeError`` if it has no name."""
    name, colon, value = text.partition(":")
    name = name.strip()
    if not colon or not name or any(c.isspace() for c in name):
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {text!r}")
    return name, value.strip()


def normalize_url(url: str) -> str:
    """A ws:// or wss:// URL: adds ``ws://`` when no scheme is given, maps http(s) to ws(s)."""
    if "://" not in url:
        return "ws://" + url
    scheme, rest = url.split("://", 1)
    mapped = {"http": "ws", "https": "wss"}.get(scheme.lower(), scheme.lower())
    return f"{mapped}://{rest}"


def describe_close(code: int | None, reason: str | None) -> str:
    """The close line: ``closed: 1000 (normal closure) "bye"`` (RFC 6455 section 7.4)."""
    if code is None:
        code = CloseCode.ABNORMAL_CLOSURE
    try:
        known = CloseCode(code)
    except ValueError:
        if 3000 <= code <= 3999:
            name = "registered"
        elif 4000 <= code <= 4999:
            name = "private use"
        else:
            name = "unknown"
    else:
        name = _CODE_NAMES.get(known, known.name.replace("_", " ").lower())
    line = f"closed: {code} ({name})"
    if reason:
        line += " " + json.dumps(reason, ensure_ascii=False)
    return line


def exit_status(code: int | None) -> int:
    """EXIT_OK for 1000, 1001 and 1005; EXIT_ABNORMAL_CLOSE for any other close code."""
    return EXIT_OK if code in _NORMAL_CODES else EXIT_ABNORMAL_CLOSE


def format_received(message: str | bytes, *, pretty_json: bool = False) -> str:
    """A received message as printed after ``<``: text as is, binary as a hex preview."""
    if isinstance(message, str):
        if pretty_json:
            try:
                value = json.loads(message)
            except ValueError:
                return message
            return json.dumps(value, indent=2, ensure_ascii=False)
        return message
    size = len(message)
    head = f"[binary {size} byte{'' if size == 1 else 's'}]"
    if not size:
        return head
    preview = message[:HEX_PREVIEW_BYTES].hex()
    return f"{head} {preview}{'…' if size > HEX_PREVIEW_BYTES else ''}"


def _stamp() -> str:
    return datetime.datetime.now().strftime("%H:%M:%S.%f")[:-3]


# ------------------------------------------------------------------- output


class _Output:
    """Where the session writes: messages on stdout, everything else on stderr."""

    def __init__(self, *, verbose: bool, pretty_json: bool, out: TextIO, err: TextIO) -> None:
        self.verbose = verbose
        self.pretty_json = pretty_json
        self.out = out
        self.err = err

    def received(self, message: str | bytes) -> None:
        """Print a received message, time-stamped, on stdout."""
        text = format_received(message, pretty_json=self.pretty_json)
        print(f"{_stamp()} < {text}", file=self.out, flush=True)

    def sent(self, message: str | bytes) -> None:
        """Print a sent message on stdout, with --verbose only."""
        if self.verbose:
            text = message if isinstance(message, str) else format_received(message)
            print(f"{_stamp()} > {text}", file=self.out, flush=True)

    def info(self, line: str) -> None:
        """Print a status line on stderr."""
        print(line, file=self.err, flush=True)

    def detail(self, line: str) -> None:
        """Print a status line on stderr, with --verbose only."""
        if self.verbose:
            print(line, file=self.err, flush=True)

    def error(self, line: str) -> None:
        """Print ``error: line`` on stderr."""
        print(f"error: {line}", file=self.err, flush=True)


# --------------------------------------------------------------- registering


def register(sub: Any) -> None:
    """Add the ``connect`` subcommand."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "connect",
        help="connect to a WebSocket server and talk to it (like wscat)",
        description="Send each line of stdin as a message and print what the server sends, "
        "time-stamped; or, with -x, send messages, wait for replies and close. "
        "Exit status: 0 after a normal close (1000/1001), 1 after an abnormal one, "
        "2 when no connection could be made.",
    )
    parser.add_argument("url", metavar="URL", help="ws:// or wss:// URL (ws:// is assumed)")
    parser.add_argument(
        "-H",
        "--header",
        dest="headers",
        action="append",
        type=parse_header,
        default=[],
        metavar="'NAME: VALUE'",
        help="add a request header (repeatable)",
    )
    parser.add_argument(
        "-s",
        "--subprotocol",
        dest="subprotocols",
        action="append",
        default=[],
        metavar="NAME",
        help="offer a subprotocol (repeatable, in order of preference)",
    )
    parser.add_argument("-o", "--origin", metavar="URL", help="send this Origin header")
    parser.add_argument(
        "-x",
        "--execute",
        action="append",
        default=[],
        metavar="MSG",
        help="send MSG (repeatable), wait for replies, close; stdin is not read",
    )
    parser.add_argument(
        "-w",
        "--wait",
        type=float,
        metavar="SECONDS",
        help=f"after the last message sent (-x, or stdin's end) wait this long for replies "
        f"before closing (default {DEFAULT_EXECUTE_WAIT} with -x, else 0)",
    )
    parser.add_argument(
        "-n",
        "--count",
        type=int,
        metavar="N",
        help="close after receiving N messages",
    )
    parser.add_argument(
        "--json", action="store_true", help="pretty-print received JSON text messages"
    )
    parser.add_argument(
        "--binary", action="store_true", help="send lines and -x messages as binary messages"
    )
    parser.add_argument(
        "-v",
        "--verbose",
        dest="show_all",
        action="store_true",
        help="show the handshake, negotiated subprotocol and compression, pings with "
        "their round-trip time, and the messages sent",
    )
    parser.add_argument(
        "--ping-interval",
        type=float,
        metavar="SECONDS",
        help="send a ping every SECONDS (--verbose prints each round-trip time); "
        f"no pong within {DEFAULTS.ping_timeout} s fails the connection",
    )
    parser.add_argument(
        "--no-compression", action="store_true", help="do not offer permessage-deflate"
    )
    parser.add_argument(
        "-k", "--insecure", action="store_true", help="wss: do not verify the certificate"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULTS.open_timeout,
        metavar="SECONDS",
        help=f"opening handshake timeout (default {DEFAULTS.open_timeout})",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``tidewire connect``; returns the exit status."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            # A peer's text may hold characters the terminal's encoding lacks.
            stream.reconfigure(errors="backslashreplace")
    output = _Output(verbose=args.show_all, pretty_json=args.json, out=sys.stdout, err=sys.stderr)
    try:
        return asyncio.run(_main(args, output))
    except KeyboardInterrupt:
        output.error("interrupted")
        return EXIT_INTERRUPTED


# ------------------------------------------------------------------- session


def _connect_kwargs(args: argparse.Namespace, url: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "headers": list(args.headers),
        "subprotocols": list(args.subprotocols) or None,
        "origin": args.origin,
        "compression": not args.no_compression,
        "open_timeout": args.timeout,
    }
    if args.ping_interval is not None:
        kwargs["ping_interval"] = None  # our own pinger replaces the transport's keepalive
    if urllib.parse.urlsplit(url).scheme == "wss":
        context = ssl.create_default_context()
        if args.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        kwargs["ssl"] = context
    return kwargs


async def _open(url: str, args: argparse.Namespace, output: _Output) -> WebSocket | None:
    """Connect; on failure print why and return None."""
    try:
        return await tidewire.connect(url, **_connect_kwargs(args, url))
    except InvalidStatus as exc:
        response = exc.response
        reason = getattr(response, "reason", "")
        output.error(f"server answered {exc.status} {reason}".rstrip())
        if response is not None:
            for name, value in response.headers:
                output.detail(f"< {name}: {value}")
    except HandshakeError as exc:
        output.error(f"opening handshake failed: {exc}")
    except ssl.SSLCertVerificationError as exc:
        output.error(
            f"TLS certificate of {url} not trusted: {exc.verify_message}; "
            "--insecure skips the check"
        )
    except TimeoutError as exc:
        output.error(str(exc) or f"opening handshake with {url} timed out")
    except ConnectionRefusedError:
        output.error(f"connection refused by {_host_port(url)}")
    except OSError as exc:
        output.error(f"cannot connect to {_host_port(url)}: {exc.strerror or exc}")
    except ValueError as exc:  # bad URL, bad header value, ssl for ws://
        output.error(str(exc))
    return None


def _host_port(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "wss" else 80)
    except ValueError:
        return parts.netloc
    return f"{parts.hostname}:{port}"


def _show_handshake(ws: WebSocket, output: _Output, *, offered_compression: bool) -> None:
    request, response = ws.request, ws.response
    if request is not None:
        output.detail(f"> {request.method} {request.path} HTTP/1.1")
        for name, value in request.headers:
            output.detail(f"> {name}: {value}")
    if response is not None:
        output.detail(f"< HTTP/1.1 {response.status} {response.reason}")
        for name, value in response.headers:
            output.detail(f"< {name}: {value}")
    output.detail(f"subprotocol: {ws.subprotocol or 'none'}")
    names = [str(getattr(ext, "name", ext)) for ext in ws.extensions]
    output.detail(f"extensions: {', '.join(names) or 'none'}")
    if "permessage-deflate" in names:
        params = response.headers.get("Sec-WebSocket-Extensions") if response else None
        output.detail(f"compression: on ({params or 'permessage-deflate'})")
    elif offered_compression:
        output.detail("compression: off (the server declined permessage-deflate)")
    else:
        output.detail("compression: off (not offered)")


class _StdinReader:
    """Lines of stdin, read by a daemon thread so the event loop never blocks.

    A thread rather than ``loop.connect_read_pipe``: that cannot watch a
    regular file, and it leaves a shared terminal's stdin non-blocking.  It
    reads the raw descriptor, never ``sys.stdin``, so no buffer lock can be
    held at interpreter shutdown while it is blocked.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.lines: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.thread = threading.Thread(target=self._read, name="tidewire-stdin", daemon=True)

    def start(self) -> None:
        """Start the reader thread; lines arrive in :attr:`lines`, then None at EOF."""
        self.thread.start()

    def _put(self, item: bytes | None) -> bool:
        try:
            self.loop.call_soon_threadsafe(self.lines.put_nowait, item)
        except RuntimeError:  # the loop is closed: the session is over
            return False
        return True

    def _read(self) -> None:
        pending = b""
        try:
            fd = sys.stdin.fileno()
        except (AttributeError, ValueError, OSError):  # no stdin, closed, or not a file
            fd = -1
        while fd >= 0:
            try:
                chunk = os.read(fd, 65536)
            except InterruptedError:
                continue
            except OSError:
                break
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if not self._put(line):
                    return
        if pending:
            self._put(pending)
        self._put(None)


async def _pinger(ws: WebSocket, interval: float, output: _Output) -> None:
    timeout = DEFAULTS.ping_timeout
    while True:
        await asyncio.sleep(interval)
        try:
            rtt = await asyncio.wait_for(ws.ping(), timeout)
        except ConnectionClosed:
            return
        except TimeoutError:
            output.info(f"no pong within {timeout} s; failing the connection")
            ws.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
            return
        output.detail(f"{_stamp()} pong: round trip {rtt * 1000:.3f} ms")


async def _first_ping(ws: WebSocket, output: _Output) -> None:
    try:
        rtt = await asyncio.wait_for(ws.ping(), FIRST_PING_TIMEOUT)
    except TimeoutError:
        output.detail(f"{_stamp()} ping: no pong within {FIRST_PING_TIMEOUT} s")
    except ConnectionClosed:
        pass
    else:
        output.detail(f"{_stamp()} pong: round trip {rtt * 1000:.3f} ms")


async def _receiver(ws: WebSocket, output: _Output, count: int | None, stop: asyncio.Event) -> None:
    received = 0
    with contextlib.suppress(ConnectionClosed):
        while True:
            message = await ws.recv()
            output.received(message)
            received += 1
            if count is not None and received >= count:
                stop.set()


async def _send(ws: WebSocket, message: str, binary: bool, output: _Output) -> None:
    data: str | bytes = message.encode("utf-8") if binary else message
    await ws.send(data)
    output.sent(data)


async def _sender(
    ws: WebSocket,
    args: argparse.Namespace,
    output: _Output,
    stop: asyncio.Event,
) -> None:
    """Send the -x messages or stdin's lines, wait for replies, then ask to close."""
    with contextlib.suppress(ConnectionClosed):
        if args.execute:
            for message in args.execute:
                await _send(ws, message, args.binary, output)
            wait = DEFAULT_EXECUTE_WAIT if args.wait is None else args.wait
        else:
            reader = _StdinReader(asyncio.get_running_loop())
            reader.start()
            while (line := await reader.lines.get()) is not None:
                text = line.removesuffix(b"\r").decode("utf-8", "replace")
                await _send(ws, text, args.binary, output)
            wait = args.wait or 0.0
        if wait > 0:
            await asyncio.sleep(wait)
    stop.set()


async def _main(args: argparse.Namespace, output: _Output) -> int:
    url = normalize_url(args.url)
    ws = await _open(url, args, output)
    if ws is None:
        return EXIT_NO_CONNECTION
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = 0

    def interrupted() -> None:
        # The first Ctrl-C closes with 1000; a second one stops waiting for the peer.
        nonlocal signals
        signals += 1
        if signals > 1 and ws.transport is not None:
            ws.transport.abort()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, interrupted)
    _show_handshake(ws, output, offered_compression=not args.no_compression)
    if not args.execute:
        extra = f" (subprotocol {ws.subprotocol})" if ws.subprotocol else ""
        output.info(f"connected to {url}{extra}; end input (Ctrl-D) to close")
    receiver = asyncio.create_task(_receiver(ws, output, args.count, stop))
    helpers: list[asyncio.Task[None]] = []
    if output.verbose:
        await _first_ping(ws, output)
    if args.ping_interval is not None:
        helpers.append(asyncio.create_task(_pinger(ws, args.ping_interval, output)))
    helpers.append(asyncio.create_task(_sender(ws, args, output, stop)))
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({receiver, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not receiver.done():
            await ws.close(CloseCode.NORMAL_CLOSURE)
        await ws.wait_closed()
        with contextlib.suppress(asyncio.CancelledError):
            await receiver
    finally:
        for task in [*helpers, stopping, receiver]:
            task.cancel()
        await asyncio.gather(*helpers, stopping, receiver, return_exceptions=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    code = ws.close_code
    output.info(describe_close(code, ws.close_reason))
    return exit_status(code)
