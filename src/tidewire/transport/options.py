"""Every transport limit and timeout: one frozen dataclass, each default with its reason.

``None`` disables a limit or a timer.  docs/defaults.md lists the same table;
tests/transport/test_defaults_doc.py checks that the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from tidewire.protocol import http
from tidewire.protocol.connection import DEFAULT_MAX_MESSAGE_SIZE

__all__ = ["Options", "DEFAULTS"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """Options shared by ``serve()`` and ``connect()``; all keyword-only."""

    #: Largest message accepted, after decompression (bytes); 1009 beyond it.
    #: 1 MiB, as websockets: chat and RPC fit; a flood of big messages does not.
    max_message_size: int | None = DEFAULT_MAX_MESSAGE_SIZE
    #: Largest single frame payload; None: bounded by max_message_size only.
    max_frame_size: int | None = None
    #: Messages received but not yet read by recv() before reading pauses.
    #: 16, as websockets: enough to absorb bursts, small enough to bound memory
    #: to max_queue * max_message_size per connection.
    max_queue: int = 16
    #: Transport write buffer (bytes) above which send() waits; 64 KiB, asyncio's default.
    write_high_water: int = 64 * 1024
    #: Write buffer level at which waiting send() calls resume.
    write_low_water: int = 16 * 1024
    #: Seconds for the opening handshake (TCP accept to 101); anchors use 10 s.
    open_timeout: float | None = 10.0
    #: Seconds to wait for the closing handshake before aborting TCP; anchors use 10 s.
    close_timeout: float | None = 10.0
    #: Seconds between keepalive pings; 20 s keeps NAT and proxies (often 30-60 s idle) open.
    ping_interval: float | None = 20.0
    #: Seconds to wait for a pong before failing with 1011; 20 s as websockets.
    ping_timeout: float | None = 20.0
    #: Offer/accept permessage-deflate (RFC 7692).
    compression: bool = True
    #: Window bits for our compressor: 12 bits with memLevel 5 is about 64 KiB
    #: per connection instead of about 316 KiB at zlib's maximum.
    compression_window_bits: int = 12
    #: zlib memLevel for our compressor (see compression_window_bits).
    compression_mem_level: int = 5
    #: zlib level: 6 (zlib's default) compresses chat-sized JSON about 20%
    #: better than 1 for about 30% more CPU; lower it for bulk traffic.
    compression_level: int = 6
    #: Messages shorter than this (bytes) are sent uncompressed: deflate's
    #: framing costs more than it saves on tiny messages.
    compression_threshold: int = 32
    #: Longest request/status line in the opening handshake (bytes).
    max_line: int = http.MAX_LINE_BYTES
    #: Most header fields in the opening handshake; 431 beyond it.
    max_headers: int = http.MAX_HEADERS
    #: Largest handshake head (bytes); 431 beyond it.
    max_head: int = http.MAX_HEADER_BYTES
    #: Largest plain-HTTP request body (bytes, Content-Length framing only):
    #: read whole before the HTTP route runs; 413 beyond it.
    max_body_size: int | None = http.MAX_BODY_BYTES
    #: Seconds a peer's valid messages may wait to be handled before a protocol
    #: error that followed them closes the connection.
    fail_delay: float = 1.0

    def with_(self, **changes: Any) -> Options:
        """A copy with ``changes`` applied (unknown names raise TypeError)."""
        return replace(self, **changes)

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> Options:
        """Pop every option name from ``kwargs`` and build Options from them."""
        names = {f.name for f in fields(cls)}
        picked = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
        return cls(**picked)


DEFAULTS = Options()
