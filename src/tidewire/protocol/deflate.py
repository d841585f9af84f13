"""permessage-deflate (RFC 7692): negotiation, size-bounded inflate, threshold.

Three pieces:

* :func:`parse_params` checks one offer or response against the grammar of
  RFC 7692 section 7.1 (all four parameters).
* :class:`ServerDeflateFactory` and :class:`ClientDeflateFactory` negotiate
  (sections 5 and 7.1); they only use ``name``, ``accept`` and ``offer`` so
  the generic framework in ``extensions.py`` can drive them by duck typing.
* :class:`PerMessageDeflate` is the negotiated extension: ``deflate`` one
  outgoing message (or fragment), ``inflate`` incoming payload in arbitrary
  chunks without ever producing more than the caller's limit (section 7.2).

Sending with an 8-bit window: zlib refuses a raw-deflate compressor with
``wbits=8`` and silently upgrades other 8-bit compressors to 9, which a peer
that allocated 256 bytes of window may not survive.  tidewire therefore never
*compresses* with an 8-bit window:

* a server declines an offer whose ``server_max_window_bits=8`` it would have
  to honour (section 7.1.2.1 forbids answering 9) and tries the next offer;
  ``ServerDeflateFactory(server_max_window_bits=8)`` is a ``ValueError``;
* a client never offers ``client_max_window_bits=8`` (``ValueError``); if a
  server nevertheless answers ``client_max_window_bits=8`` (allowed when the
  client offered the parameter), the client accepts and sends every message
  uncompressed, which section 6 allows: ``should_compress`` is always False
  and ``deflate`` emits stored blocks, which use no window at all.

Receiving with an 8-bit window is fine: zlib inflates raw 8-bit streams.

Sending policy (RFC 7692 leaves it to the sender, section 6).  Every message
``should_compress`` accepts goes out with RSV1 set; the policy only chooses how
much work ``deflate`` spends on it:

* Adaptive skipping: a message of at least ``ADAPTIVE_MIN_SIZE`` bytes that
  deflates to more than ``INCOMPRESSIBLE_RATIO`` of its size is a sign of
  incompressible data (images, archives, encrypted blobs) and puts the sender
  in doubt.  In doubt, each large message is first sampled: ``SAMPLE_SIZE``
  bytes from its middle go through a throwaway compressor, and if they do not
  compress either, the message is sent as stored blocks (BTYPE 00: 5 bytes
  per 64 KiB, no compression work).  Otherwise it is compressed and judged
  like any other; ``DOUBT_EXIT`` well-compressed large messages in a row end
  the doubt and the sampling.  Smaller messages are always compressed and
  never judged.  Stored blocks rather than RSV1 clear: every peer inflates
  them, while some (kosoku, an Autobahn port) mishandle an uncompressed
  message in a compressed session.  The peer's window now holds data our
  compressor never saw, so it is dropped and the next message starts a fresh
  one, which is valid at any message boundary.
* Level by size: a message whose first piece has at least
  ``FAST_LEVEL_MIN_SIZE`` bytes is compressed at ``FAST_COMPRESS_LEVEL`` when
  the configured level is higher and the window has at least
  ``FAST_LEVEL_MIN_WINDOW_BITS`` bits.  Each switch starts a fresh compressor.
  Back from the fast level, with context takeover, that compressor is primed
  (``zdict``) with the end of the last message: any suffix of what the peer
  has inflated is in its window, so small messages keep their context.

Both decisions are taken once per message, at its first piece.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import TypeAlias

from tidewire._types import BytesLike
from tidewire.errors import HandshakeError, PayloadTooBig, ProtocolError
from tidewire.protocol.close import CloseCode
from tidewire.protocol.extensions import ClientExtensionFactory, ServerExtensionFactory

__all__ = [
    "EXTENSION_NAME",
    "MIN_WINDOW_BITS",
    "MAX_WINDOW_BITS",
    "MIN_COMPRESS_WINDOW_BITS",
    "DEFAULT_SERVER_MAX_WINDOW_BITS",
    "DEFAULT_CLIENT_MAX_WINDOW_BITS",
    "DEFAULT_COMPRESS_LEVEL",
    "DEFAULT_MEM_LEVEL",
    "DEFAULT_MIN_SIZE",
    "FAST_LEVEL_MIN_SIZE",
    "FAST_COMPRESS_LEVEL",
    "FAST_LEVEL_MIN_WINDOW_BITS",
    "ADAPTIVE_MIN_SIZE",
    "INCOMPRESSIBLE_RATIO",
    "SAMPLE_SIZE",
    "DOUBT_EXIT",
    "DeflateParams",
    "parse_params",
    "ServerDeflateFactory",
    "ClientDeflateFactory",
    "PerMessageDeflate",
]

_Params: TypeAlias = list[tuple[str, str | None]]

EXTENSION_NAME = "permessage-deflate"

#: The LZ77 window sizes RFC 7692 section 7.1.2 allows, as powers of two.
MIN_WINDOW_BITS = 8
MAX_WINDOW_BITS = 15
#: zlib cannot compress raw deflate with a 256-byte window (see module docstring).
MIN_COMPRESS_WINDOW_BITS = 9

#: A 4 KiB window with memLevel 5 keeps a server's zlib state near 50 KiB per
#: connection (deflate 2**14 + 2**14 bytes, inflate 2**12, plus ~13 KiB of
#: structs) instead of ~300 KiB with zlib's defaults (15 and 8); on small JSON
#: events the ratio only drops from 0.17 to 0.19 (measured, zlib 1.2.13).
DEFAULT_SERVER_MAX_WINDOW_BITS = 12
#: The limit a server asks of a client that offered ``client_max_window_bits``:
#: the server's inflate window then costs 4 KiB instead of 32 KiB.
DEFAULT_CLIENT_MAX_WINDOW_BITS = 12
#: zlib's own default.  On ~150-byte JSON events with window 12 / memLevel 5 it
#: costs 5.2 us per message against 3.9 us for level 1 and sends ~20% fewer
#: bytes; level 9 gains under 1% more (measured, zlib 1.2.13).
DEFAULT_COMPRESS_LEVEL = 6
#: memLevel 5 shrinks zlib's hash table and pending buffer from 128 KiB each
#: (memLevel 8) to 16 KiB; with window 12 the ratio on JSON events was the same.
DEFAULT_MEM_LEVEL = 5
#: Without context takeover, deflate output for messages under 32 bytes was no
#: smaller than the input (JSON events: +2 bytes at 8 to 24 bytes, even at 32).
DEFAULT_MIN_SIZE = 32

# Sending policy (see the module docstring).  Measured per message with zlib
# 1.2.13, window 12 and memLevel 5 on the Autobahn 12.x files (JSON, HTML,
# German text, a BMP image, a PDF), sent as Autobahn does: consecutive slices.

#: Messages whose first piece has at least this many bytes use the fast level.
#: At 16 KiB level 1 takes 41 / 54 / 232 us on JSON / HTML / text against
#: 65 / 84 / 442 us at level 6, for ratios 0.059 / 0.081 / 0.477 instead of
#: 0.041 / 0.057 / 0.435; at 4 KiB it saved JSON and HTML only 4-6 us (of a
#: 300 us Autobahn echo round trip) for 40% more bytes.
FAST_LEVEL_MIN_SIZE = 16 * 1024
#: zlib's fastest LZ77 level; 2 and 3 took as long, 4 took 30% longer.
FAST_COMPRESS_LEVEL = 1
#: Under 2 KiB of window level 1 saves little and loses much: 128 KiB of JSON
#: took 1048 / 429 / 334 / 267 us at level 1 against 1274 / 577 / 512 / 478 us
#: at level 6 with windows 9 / 10 / 11 / 12, for ratios 0.092 / 0.065 / 0.061 /
#: 0.057 against 0.037 / 0.036 / 0.037 / 0.040.
FAST_LEVEL_MIN_WINDOW_BITS = 11
#: Only messages this large are judged and, in doubt, sampled and stored: the
#: message is then 4 samples long, and sampling 1 KiB (16 us) spares compressing
#: 4 KiB of the BMP or PDF (113-125 us).
ADAPTIVE_MIN_SIZE = 4096
#: The BMP (0.88-0.92) and the PDF's compressed streams (0.83-0.85 on average)
#: save under 17% whatever the level or size (1-128 KiB) for 27-35 ns per input
#: byte; the least compressible useful file, the German text, deflates to 0.44-
#: 0.51 (JSON and HTML to 0.04-0.10).
INCOMPRESSIBLE_RATIO = 0.8
#: Deflated alone, 1 KiB from a message's middle still separates the data at
#: INCOMPRESSIBLE_RATIO: text 0.55-0.60, JSON 0.17-0.19, HTML 0.18-0.35
#: against BMP 0.92-0.98 and PDF streams 1.00, for 10-16 us; 512-byte samples
#: put the text at 0.64-0.66, 2 KiB samples cost 23 us.
SAMPLE_SIZE = 1024
#: Well-compressed large messages in a row that end the doubt.  Leaving too
#: early costs one full compression of incompressible data (118 us at 4 KiB,
#: 3.5 ms at 128 KiB), staying costs one sample per large message; the PDF's
#: compressible stretches ran 3 to 11 messages of 16-128 KiB, so a mixed stream
#: keeps sampling while one that turned compressible stops after 16 messages.
DOUBT_EXIT = 16

_SERVER_NO_CONTEXT_TAKEOVER = "server_no_context_takeover"
_CLIENT_NO_CONTEXT_TAKEOVER = "client_no_context_takeover"
_SERVER_MAX_WINDOW_BITS = "server_max_window_bits"
_CLIENT_MAX_WINDOW_BITS = "client_max_window_bits"

# Exactly the spellings the ABNF of section 7.1.2 allows: no sign, no leading
# zero, no non-ASCII digits (str.isdigit would accept those).
_WINDOW_BITS_BY_TEXT = {str(bits): bits for bits in range(MIN_WINDOW_BITS, MAX_WINDOW_BITS + 1)}

# An empty stored block's LEN and NLEN: a sync flush ends with them, the sender
# strips them at the end of a message and the receiver puts them back (7.2.1, 7.2.2).
_TAIL = b"\x00\x00\xff\xff"
# A lone stored-block header (BFINAL=0, BTYPE=00, padding): the payload of an
# empty compressed message once the tail is stripped (section 7.2.3.6).
_EMPTY_BLOCK = b"\x00"
# LEN of a stored block is 16 bits (RFC 1951 section 3.2.4).
_STORED_BLOCK_MAX = 0xFFFF
_STORED_HEADER = struct.Struct("<BHH")

# zlib.h: memLevel=9 uses maximum memory; Python does not export MAX_MEM_LEVEL.
_MAX_MEM_LEVEL = 9
# Approximate sizes of zlib's internal structs on 64-bit builds (zlib 1.2/1.3).
_DEFLATE_STATE_BYTES = 5_900
_INFLATE_STATE_BYTES = 7_200
# The throwaway sample compressor (its output is never sent): with a 4 KiB
# window and memLevel 5 a 1 KiB sample took 16 us, with 10 / 3 20 us and 9 / 1
# 33 us (smaller buffers, more blocks), with 15 / 8 the same 16 us (zlib 1.2.13).
_SAMPLE_WINDOW_BITS = 12
_SAMPLE_MEM_LEVEL = 5


@dataclass(frozen=True, slots=True)
class DeflateParams:
    """The parameters of one offer or response (RFC 7692 section 7.1).

    ``None`` means the parameter is absent.  A ``client_max_window_bits``
    offered without a value parses as 15: the client accepts any limit the
    server picks and would otherwise use the largest window (section 7.1.2.2).
    """

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: int | None = None
    client_max_window_bits: int | None = None


def parse_params(
    params: Sequence[tuple[str, str | None]], *, is_server_side: bool
) -> DeflateParams:
    """Validate the parameters of one permessage-deflate element (RFC 7692 section 7.1).

    ``is_server_side`` is True when parsing a client's offer (on a server) and
    False when parsing a server's response (on a client).  The two flags take
    no value; the window sizes take 8..15 spelled in decimal without leading
    zeros; only an offer may carry ``client_max_window_bits`` without a value.
    Duplicates and unknown parameters are errors (section 7.1).

    Raise HandshakeError naming the parameter, with status 400 for an offer
    (a server declines it) and 502 for a response (a client fails on it).
    """
    status = HTTPStatus.BAD_REQUEST if is_server_side else HTTPStatus.BAD_GATEWAY
    where = "offer" if is_server_side else "response"
    seen: set[str] = set()
    flags = {_SERVER_NO_CONTEXT_TAKEOVER: False, _CLIENT_NO_CONTEXT_TAKEOVER: False}
    windows: dict[str, int | None] = {_SERVER_MAX_WINDOW_BITS: None, _CLIENT_MAX_WINDOW_BITS: None}
    for name, value in params:
        if name in seen:
            raise HandshakeError(f"{EXTENSION_NAME} {where}: duplicate parameter {name}", status)
        seen.add(name)
        if name in flags:
            if value is not None:
                raise HandshakeError(
                    f"{EXTENSION_NAME} {where}: parameter {name} takes no value, got {value!r}",
                    status,
                )
            flags[name] = True
        elif name in windows:
            if value is None:
                if is_server_side and name == _CLIENT_MAX_WINDOW_BITS:
                    windows[name] = MAX_WINDOW_BITS
                    continue
                raise HandshakeError(
                    f"{EXTENSION_NAME} {where}: parameter {name} requires a value", status
                )
            bits = _WINDOW_BITS_BY_TEXT.get(value)
            if bits is None:
                raise HandshakeError(
                    f"{EXTENSION_NAME} {where}: parameter {name}={value!r} is not an integer "
                    f"from {MIN_WINDOW_BITS} to {MAX_WINDOW_BITS} without leading zeros",
                    status,
                )
            windows[name] = bits
        else:
            raise HandshakeError(f"{EXTENSION_NAME} {where}: unknown parameter {name}", status)
    return DeflateParams(
        server_no_context_takeover=flags[_SERVER_NO_CONTEXT_TAKEOVER],
        client_no_context_takeover=flags[_CLIENT_NO_CONTEXT_TAKEOVER],
        server_max_window_bits=windows[_SERVER_MAX_WINDOW_BITS],
        client_max_window_bits=windows[_CLIENT_MAX_WINDOW_BITS],
    )


def _check_window(name: str, bits: int, low: int = MIN_WINDOW_BITS) -> None:
    if isinstance(bits, bool) or not low <= bits <= MAX_WINDOW_BITS:
        hint = " (zlib cannot compress with an 8-bit window)" if bits == MIN_WINDOW_BITS else ""
        raise ValueError(f"{name}={bits!r}: expected {low}..{MAX_WINDOW_BITS}{hint}")


def _check_zlib_settings(compress_level: int, mem_level: int, min_size: int) -> None:
    if not 0 <= compress_level <= zlib.Z_BEST_COMPRESSION:
        raise ValueError(
            f"compress_level={compress_level!r}: expected 0..{zlib.Z_BEST_COMPRESSION}"
        )
    if not 1 <= mem_level <= _MAX_MEM_LEVEL:
        raise ValueError(f"mem_level={mem_level!r}: expected 1..{_MAX_MEM_LEVEL}")
    if min_size < 0:
        raise ValueError(f"min_size={min_size!r}: expected 0 or more")


def _render(
    *,
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: int | None,
    client_max_window_bits: int | bool | None,
) -> _Params:
    params: _Params = []
    if server_no_context_takeover:
        params.append((_SERVER_NO_CONTEXT_TAKEOVER, None))
    if client_no_context_takeover:
        params.append((_CLIENT_NO_CONTEXT_TAKEOVER, None))
    if server_max_window_bits is not None:
        params.append((_SERVER_MAX_WINDOW_BITS, str(server_max_window_bits)))
    if client_max_window_bits is True:
        params.append((_CLIENT_MAX_WINDOW_BITS, None))
    elif client_max_window_bits is not None and client_max_window_bits is not False:
        params.append((_CLIENT_MAX_WINDOW_BITS, str(client_max_window_bits)))
    return params


class ServerDeflateFactory(ServerExtensionFactory):
    """Server side of permessage-deflate negotiation (RFC 7692 sections 5 and 7.1).

    ``server_no_context_takeover`` / ``client_no_context_takeover``: when True
    every response carries the flag.  Either way the server grants
    ``server_no_context_takeover`` when the client asks for it (7.1.1.1) and
    echoes ``client_no_context_takeover`` when the client offers it (7.1.1.2):
    that binds the client to its own hint, so the server may drop its inflater
    between messages.

    ``server_max_window_bits`` (9..15, default 12): the server compresses with
    at most this window and says so in every response, lowered to the
    client's ``server_max_window_bits`` when that is smaller; ``None`` means
    no own limit (the parameter is then only answered when the client sent
    it).  An offer that would force 8 is declined (see the module docstring).

    ``client_max_window_bits`` (8..15, default 12): asked of the client only
    when its offer carries the parameter, as section 7.1.2.2 requires, and
    never above the client's own value; otherwise the client may use 15.

    ``compress_level``, ``mem_level`` go to zlib; messages shorter than
    ``min_size`` bytes are sent uncompressed.
    """

    name = EXTENSION_NAME

    def __init__(
        self,
        *,
        server_no_context_takeover: bool = False,
        client_no_context_takeover: bool = False,
        server_max_window_bits: int | None = DEFAULT_SERVER_MAX_WINDOW_BITS,
        client_max_window_bits: int | None = DEFAULT_CLIENT_MAX_WINDOW_BITS,
        compress_level: int = DEFAULT_COMPRESS_LEVEL,
        mem_level: int = DEFAULT_MEM_LEVEL,
        min_size: int = DEFAULT_MIN_SIZE,
    ) -> None:
        if server_max_window_bits is not None:
            _check_window(
                "server_max_window_bits", server_max_window_bits, MIN_COMPRESS_WINDOW_BITS
            )
        if client_max_window_bits is not None:
            _check_window("client_max_window_bits", client_max_window_bits)
        _check_zlib_settings(compress_level, mem_level, min_size)
        self.server_no_context_takeover = server_no_context_takeover
        self.client_no_context_takeover = client_no_context_takeover
        self.server_max_window_bits = server_max_window_bits
        self.client_max_window_bits = client_max_window_bits
        self.compress_level = compress_level
        self.mem_level = mem_level
        self.min_size = min_size

    def accept(
        self, offers: Sequence[Sequence[tuple[str, str | None]]]
    ) -> tuple[_Params, PerMessageDeflate] | None:
        """Accept the first offer that can be accepted (RFC 7692 section 5).

        ``offers`` are the parameter lists of the client's permessage-deflate
        elements, in the client's order of preference.  Invalid offers and
        offers that would force an 8-bit server window are declined.  Return
        the response parameters and the extension, or None to decline all.
        """
        for offer in offers:
            try:
                params = parse_params(offer, is_server_side=True)
            except HandshakeError:
                continue
            accepted = self._accept_one(params)
            if accepted is not None:
                return accepted
        return None

    def _accept_one(self, offer: DeflateParams) -> tuple[_Params, PerMessageDeflate] | None:
        server_nct = self.server_no_context_takeover or offer.server_no_context_takeover
        client_nct = self.client_no_context_takeover or offer.client_no_context_takeover

        server_bits = self.server_max_window_bits
        if offer.server_max_window_bits is not None:
            # Section 7.1.2.1: the answer MUST NOT exceed the offered value.
            server_bits = min(offer.server_max_window_bits, server_bits or MAX_WINDOW_BITS)
        if server_bits is not None and server_bits < MIN_COMPRESS_WINDOW_BITS:
            return None

        client_bits: int | None = None
        if offer.client_max_window_bits is not None:
            # Section 7.1.2.2: only an offer carrying the parameter may be
            # answered with it, and never with a larger value.
            client_bits = min(
                offer.client_max_window_bits, self.client_max_window_bits or MAX_WINDOW_BITS
            )
            if client_bits == MAX_WINDOW_BITS:
                client_bits = None

        response = _render(
            server_no_context_takeover=server_nct,
            client_no_context_takeover=client_nct,
            server_max_window_bits=server_bits,
            client_max_window_bits=client_bits,
        )
        extension = PerMessageDeflate(
            is_server_side=True,
            server_no_context_takeover=server_nct,
            client_no_context_takeover=client_nct,
            server_max_window_bits=server_bits or MAX_WINDOW_BITS,
            client_max_window_bits=client_bits or MAX_WINDOW_BITS,
            compress_level=self.compress_level,
            mem_level=self.mem_level,
            min_size=self.min_size,
        )
        return response, extension


class ClientDeflateFactory(ClientExtensionFactory):
    """Client side of permessage-deflate negotiation (RFC 7692 sections 5 and 7.1).

    The four parameters go into the offer as given: the flags when True,
    ``server_max_window_bits`` when not None (8..15), and
    ``client_max_window_bits`` without a value when True (the default: the
    server may limit our window), with a value when an int (9..15, a promise
    to compress with at most that window), not at all when None or False.

    ``compress_level``, ``mem_level`` go to zlib; messages shorter than
    ``min_size`` bytes are sent uncompressed.
    """

    name = EXTENSION_NAME

    def __init__(
        self,
        *,
        server_no_context_takeover: bool = False,
        client_no_context_takeover: bool = False,
        server_max_window_bits: int | None = None,
        client_max_window_bits: int | bool | None = True,
        compress_level: int = DEFAULT_COMPRESS_LEVEL,
        mem_level: int = DEFAULT_MEM_LEVEL,
        min_size: int = DEFAULT_MIN_SIZE,
    ) -> None:
        if server_max_window_bits is not None:
            _check_window("server_max_window_bits", server_max_window_bits)
        if client_max_window_bits is False:
            client_max_window_bits = None
        if client_max_window_bits is not None and client_max_window_bits is not True:
            _check_window(
                "client_max_window_bits", client_max_window_bits, MIN_COMPRESS_WINDOW_BITS
            )
        _check_zlib_settings(compress_level, mem_level, min_size)
        self.server_no_context_takeover = server_no_context_takeover
        self.client_no_context_takeover = client_no_context_takeover
        self.server_max_window_bits = server_max_window_bits
        self.client_max_window_bits: int | bool | None = client_max_window_bits
        self.compress_level = compress_level
        self.mem_level = mem_level
        self.min_size = min_size

    def offer(self) -> _Params:
        """The parameters of our permessage-deflate offer (RFC 7692 section 7.1)."""
        return _render(
            server_no_context_takeover=self.server_no_context_takeover,
            client_no_context_takeover=self.client_no_context_takeover,
            server_max_window_bits=self.server_max_window_bits,
            client_max_window_bits=self.client_max_window_bits,
        )

    def accept(self, params: Sequence[tuple[str, str | None]]) -> PerMessageDeflate:
        """Check the server's response against our offer (RFC 7692 section 7.1).

        A response may add either flag and ``server_max_window_bits``; it must
        keep ``server_no_context_takeover`` and ``server_max_window_bits`` if
        offered (the latter at or below our value) and may only carry
        ``client_max_window_bits`` if offered (at or below our value, if any).
        Raise HandshakeError (502) naming the parameter otherwise.
        """
        response = parse_params(params, is_server_side=False)
        if self.server_no_context_takeover and not response.server_no_context_takeover:
            raise _bad_response(f"{_SERVER_NO_CONTEXT_TAKEOVER} was offered but is missing")

        if self.server_max_window_bits is not None:
            if response.server_max_window_bits is None:
                raise _bad_response(
                    f"{_SERVER_MAX_WINDOW_BITS}={self.server_max_window_bits} was offered "
                    "but is missing"
                )
            if response.server_max_window_bits > self.server_max_window_bits:
                raise _bad_response(
                    f"{_SERVER_MAX_WINDOW_BITS}={response.server_max_window_bits} exceeds "
                    f"the offered {self.server_max_window_bits}"
                )

        offered = self.client_max_window_bits
        if response.client_max_window_bits is None:
            client_bits = MAX_WINDOW_BITS if offered is None or offered is True else offered
        elif offered is None:
            raise _bad_response(
                f"{_CLIENT_MAX_WINDOW_BITS}={response.client_max_window_bits} was not offered"
            )
        elif offered is not True and response.client_max_window_bits > offered:
            raise _bad_response(
                f"{_CLIENT_MAX_WINDOW_BITS}={response.client_max_window_bits} exceeds "
                f"the offered {offered}"
            )
        else:
            client_bits = response.client_max_window_bits

        return PerMessageDeflate(
            is_server_side=False,
            server_no_context_takeover=response.server_no_context_takeover,
            client_no_context_takeover=(
                response.client_no_context_takeover or self.client_no_context_takeover
            ),
            server_max_window_bits=response.server_max_window_bits or MAX_WINDOW_BITS,
            client_max_window_bits=client_bits,
            compress_level=self.compress_level,
            mem_level=self.mem_level,
            min_size=self.min_size,
        )


def _inflate_bounded(
    decompressor: zlib._Decompress, data: BytesLike, max_size: int | None, already: int
) -> bytes:
    if max_size is None:
        return decompressor.decompress(data)
    budget = max(max_size - already, 0)
    # One byte past the budget tells "exactly at the limit" from "over it"
    # without letting zlib expand a bomb any further.
    out = decompressor.decompress(data, budget + 1)
    if len(out) > budget:
        raise PayloadTooBig("message", max_size, already + len(out))
    return out


def _bad_response(detail: str) -> HandshakeError:
    return HandshakeError(f"{EXTENSION_NAME} response: {detail}", HTTPStatus.BAD_GATEWAY)


def _stored_blocks(data: BytesLike, *, fin: bool) -> bytes:
    # Stored blocks carry no back-references, so they suit any peer window.
    view = memoryview(data).cast("B")
    parts: list[BytesLike] = []
    for start in range(0, len(view), _STORED_BLOCK_MAX):
        chunk = view[start : start + _STORED_BLOCK_MAX]
        parts.append(_STORED_HEADER.pack(0, len(chunk), len(chunk) ^ 0xFFFF))
        parts.append(chunk)
    if fin:
        parts.append(_EMPTY_BLOCK)
    return b"".join(parts)


def _sample_incompressible(data: BytesLike, size: int) -> bool:
    # Deflate SAMPLE_SIZE bytes from the middle with a throwaway compressor
    # (its output is never sent, so its window need not match the peer's).
    start = max(size - SAMPLE_SIZE, 0) // 2
    sample = memoryview(data).cast("B")[start : start + SAMPLE_SIZE]
    compressor = zlib.compressobj(
        FAST_COMPRESS_LEVEL, zlib.DEFLATED, -_SAMPLE_WINDOW_BITS, _SAMPLE_MEM_LEVEL
    )
    compressed = len(compressor.compress(sample)) + len(compressor.flush())
    return compressed > len(sample) * INCOMPRESSIBLE_RATIO


class PerMessageDeflate:
    """The negotiated permessage-deflate extension of one connection (RFC 7692).

    The four negotiated values are plain attributes, window sizes resolved
    to the effective number of bits (15 when not limited).  ``local_*`` apply
    to what we send and ``remote_*`` to what we receive.

    zlib objects are created on first use and dropped after each message when
    the no-context-takeover flag of that direction applies, so an idle
    connection without context takeover holds no zlib memory.  The compressor
    is also dropped when a message goes out as stored blocks, and replaced
    when the compression level changes (see "Sending policy" in the module
    docstring): there is never more than one.

    Not thread-safe; a connection drives one instance.
    """

    name = EXTENSION_NAME
    rsv1 = True
    rsv2 = False
    rsv3 = False

    __slots__ = (
        "is_server_side",
        "server_no_context_takeover",
        "client_no_context_takeover",
        "server_max_window_bits",
        "client_max_window_bits",
        "local_no_context_takeover",
        "remote_no_context_takeover",
        "local_max_window_bits",
        "remote_max_window_bits",
        "compress_level",
        "mem_level",
        "min_size",
        "can_compress",
        "_compressor",
        "_decompressor",
        "_sending",
        "_stored",
        "_fast",
        "_tail",
        "_fast_level_pays",
        "_message_in",
        "_message_out",
        "_doubt",
    )

    def __init__(
        self,
        *,
        is_server_side: bool,
        server_no_context_takeover: bool = False,
        client_no_context_takeover: bool = False,
        server_max_window_bits: int = MAX_WINDOW_BITS,
        client_max_window_bits: int = MAX_WINDOW_BITS,
        compress_level: int = DEFAULT_COMPRESS_LEVEL,
        mem_level: int = DEFAULT_MEM_LEVEL,
        min_size: int = DEFAULT_MIN_SIZE,
    ) -> None:
        _check_window("server_max_window_bits", server_max_window_bits)
        _check_window("client_max_window_bits", client_max_window_bits)
        _check_zlib_settings(compress_level, mem_level, min_size)
        self.is_server_side = is_server_side
        self.server_no_context_takeover = server_no_context_takeover
        self.client_no_context_takeover = client_no_context_takeover
        self.server_max_window_bits = server_max_window_bits
        self.client_max_window_bits = client_max_window_bits
        if is_server_side:
            self.local_no_context_takeover = server_no_context_takeover
            self.remote_no_context_takeover = client_no_context_takeover
            self.local_max_window_bits = server_max_window_bits
            self.remote_max_window_bits = client_max_window_bits
        else:
            self.local_no_context_takeover = client_no_context_takeover
            self.remote_no_context_takeover = server_no_context_takeover
            self.local_max_window_bits = client_max_window_bits
            self.remote_max_window_bits = server_max_window_bits
        self.compress_level = compress_level
        self.mem_level = mem_level
        self.min_size = min_size
        #: False when our sending window is 8 bits (see the module docstring).
        self.can_compress = self.local_max_window_bits >= MIN_COMPRESS_WINDOW_BITS
        self._compressor: zlib._Compress | None = None
        self._decompressor: zlib._Decompress | None = None
        # Sending state (see "Sending policy" in the module docstring).
        #: True between the first and the last piece of an outgoing message.
        self._sending = False
        #: True when the outgoing message goes out as stored blocks.
        self._stored = False
        #: True when ``_compressor`` runs at FAST_COMPRESS_LEVEL.
        self._fast = False
        #: The end of the last message, to prime the next compressor after a
        #: switch from the fast level (see ``_start_message``).
        self._tail = b""
        #: Whether large messages go at FAST_COMPRESS_LEVEL (see its comment).
        self._fast_level_pays = (
            compress_level > FAST_COMPRESS_LEVEL
            and self.local_max_window_bits >= FAST_LEVEL_MIN_WINDOW_BITS
        )
        #: Bytes in and out so far for the outgoing message.
        self._message_in = 0
        self._message_out = 0
        #: Well-compressed large messages in a row still needed to trust the
        #: data again; while nonzero, large messages are sampled first.
        self._doubt = 0

    def __repr__(self) -> str:
        role = "server" if self.is_server_side else "client"
        return (
            f"<PerMessageDeflate {role} "
            f"server_no_context_takeover={self.server_no_context_takeover} "
            f"client_no_context_takeover={self.client_no_context_takeover} "
            f"server_max_window_bits={self.server_max_window_bits} "
            f"client_max_window_bits={self.client_max_window_bits}>"
        )

    def should_compress(self, size: int) -> bool:
        """True when a message of ``size`` bytes is worth compressing.

        RFC 7692 section 6 lets an endpoint send any message uncompressed;
        messages under ``min_size`` are, and so is everything when our sending
        window is 8 bits (``can_compress`` is False).
        """
        return self.can_compress and size >= self.min_size

    def deflate(self, data: BytesLike, *, fin: bool = True) -> bytes:
        """Compress one message, or one fragment of it (RFC 7692 section 7.2.1).

        With ``fin=False`` more fragments of the same message follow: the
        output ends with a sync flush (tail included) so the peer can inflate
        it at once.  With ``fin=True`` the message ends: the trailing
        ``00 00 ff ff`` is stripped and an empty result becomes a single
        ``00`` byte (section 7.2.3.6); the compressor is then dropped if our
        no-context-takeover flag applies.  Each returned payload goes into one
        frame; only the first frame of the message carries RSV1.

        The first piece of a message decides how the whole message is sent:
        as stored blocks while recent large messages did not compress, else
        at a level chosen by the size of that piece (see "Sending policy" in
        the module docstring).  The last piece records how well it compressed.
        """
        if not self.can_compress:
            return _stored_blocks(data, fin=fin)
        size = data.nbytes if isinstance(data, memoryview) else len(data)
        if not self._sending:
            self._start_message(data, size)
        self._sending = not fin
        if self._stored:
            return _stored_blocks(data, fin=fin)
        compressor = self._compressor
        if compressor is None:
            level = FAST_COMPRESS_LEVEL if self._fast else self.compress_level
            wbits = -self.local_max_window_bits
            if self._tail:
                compressor = zlib.compressobj(
                    level, zlib.DEFLATED, wbits, self.mem_level, zdict=self._tail
                )
                self._tail = b""
            else:
                compressor = zlib.compressobj(level, zlib.DEFLATED, wbits, self.mem_level)
            self._compressor = compressor
        head = compressor.compress(data)
        flushed = compressor.flush(zlib.Z_SYNC_FLUSH)
        self._message_in += size
        if not fin:
            out = head + flushed if head else flushed
            self._message_out += len(out)
            return out
        if self.local_no_context_takeover:
            self._compressor = None
        elif self._fast:
            # Any suffix of what the peer inflated is a valid dictionary.
            self._tail = bytes(memoryview(data).cast("B")[-(1 << self.local_max_window_bits) :])
        if flushed.endswith(_TAIL):
            flushed = flushed[: -len(_TAIL)]
        out = head + flushed if head else flushed
        self._judge(self._message_in, self._message_out + len(out))
        return out or _EMPTY_BLOCK

    def shared_key(self) -> tuple[str, int, int, int] | None:
        """Equal for every codec whose :meth:`deflate_shared` output is the same; None if unsafe.

        Only without context takeover on our side (RFC 7692 section 7.1.1) is
        each message compressed with nothing before it in the window, so only
        then may many connections share one compressed frame: the key names
        what else shapes the bytes (window, level, memLevel).  None with
        context takeover, and when our window is 8 bits (nothing is compressed).
        """
        if not self.local_no_context_takeover or not self.can_compress:
            return None
        return (EXTENSION_NAME, self.local_max_window_bits, self.compress_level, self.mem_level)

    def deflate_shared(self, data: BytesLike) -> bytes:
        """Compress one whole message with a fresh compressor, touching none of our state.

        The output depends on ``data`` and :meth:`shared_key` only, so an
        encode-once broadcast sends it on every connection with an equal key
        (and only there: with context takeover it would desynchronize this
        codec's compressor from the peer's window, RFC 7692 section 7.2.3.2).
        Always at ``compress_level``: the fast level trades bytes for CPU, but
        here the CPU is spent once and the bytes once per receiver.  No
        adaptive skipping either: that judges one connection's stream.
        """
        compressor = zlib.compressobj(
            self.compress_level, zlib.DEFLATED, -self.local_max_window_bits, self.mem_level
        )
        out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
        if out.endswith(_TAIL):
            out = out[: -len(_TAIL)]
        return out or _EMPTY_BLOCK

    def _start_message(self, data: BytesLike, size: int) -> None:
        # Adaptive skipping: while in doubt, a large message whose sample does
        # not compress goes out as stored blocks.  The peer's window then holds
        # data our compressor never saw, so that compressor must not be used
        # again: drop it (the next message starts a fresh one).
        if self._doubt and size >= ADAPTIVE_MIN_SIZE and _sample_incompressible(data, size):
            self._stored = True
            self._compressor = None
            self._tail = b""
            return
        self._stored = False
        self._message_in = self._message_out = 0
        # Level by size.  A fresh compressor is valid at any message boundary.
        # Back from the fast level, it is primed with the end of the last
        # message, which is also the end of the peer's window (context
        # takeover), so small messages keep their context.
        fast = size >= FAST_LEVEL_MIN_SIZE and self._fast_level_pays
        if fast != self._fast:
            self._fast = fast
            self._compressor = None

    def _judge(self, size: int, compressed: int) -> None:
        # Adaptive skipping: only large messages tell data from framing overhead.
        if size < ADAPTIVE_MIN_SIZE:
            return
        if compressed > size * INCOMPRESSIBLE_RATIO:
            self._doubt = DOUBT_EXIT
        elif self._doubt:
            self._doubt -= 1

    def inflate(
        self, data: BytesLike, *, fin: bool, max_size: int | None, already: int = 0
    ) -> bytes:
        """Decompress the next piece of a compressed message (RFC 7692 section 7.2.2).

        ``data`` is any piece of the message's payload, a whole frame's or
        part of one, in order; ``fin`` is True for the last piece of the
        message, after which the ``00 00 ff ff`` tail is inflated too and the
        decompressor is dropped if the peer's no-context-takeover applies.
        Return the bytes inflated so far from this piece.

        ``already`` is how many bytes this message has inflated to in earlier
        calls; the output never makes the message exceed ``max_size`` (None:
        no limit).  zlib is asked for at most one byte past the limit, so a
        decompression bomb is stopped after ``max_size - already + 1`` bytes.

        Raise PayloadTooBig("message", max_size, size) with ``size`` the bytes
        seen so far (more than ``max_size``), or ProtocolError with close code
        1007 (invalid payload data) when the data is not valid DEFLATE.  After
        either the connection must be failed with that close code.

        Data after a block with BFINAL set is ignored up to the end of the
        message (section 7.2.3.4) and the next message starts a fresh stream.
        """
        decompressor = self._decompressor
        if decompressor is None:
            decompressor = self._decompressor = zlib.decompressobj(-self.remote_max_window_bits)
        try:
            out = b""
            if not decompressor.eof:
                out = _inflate_bounded(decompressor, data, max_size, already)
            if fin and not decompressor.eof:
                tail = _inflate_bounded(decompressor, _TAIL, max_size, already + len(out))
                if tail:
                    out += tail
        except zlib.error as exc:
            self._decompressor = None
            raise ProtocolError(
                f"invalid {EXTENSION_NAME} data: {exc}", CloseCode.INVALID_PAYLOAD
            ) from None
        except PayloadTooBig:
            self._decompressor = None
            raise
        if fin and (self.remote_no_context_takeover or decompressor.eof):
            self._decompressor = None
        return out

    def memory_estimate(self, *, peak: bool = False) -> int:
        """Approximate bytes of zlib state this connection holds.

        By default what is allocated now; with ``peak=True`` what it holds
        when both directions are in use.  zlib's documented formulas: deflate
        ``2**(wbits+2) + 2**(memLevel+9)``, inflate ``2**wbits``, plus the
        structs (zconf.h), plus the end of the last message kept to prime the
        next compressor (at most ``2**wbits``, only between a large message
        and the next one).
        """
        total = 0
        if self.can_compress and (peak or self._compressor is not None):
            total += (
                _DEFLATE_STATE_BYTES
                + (1 << (self.local_max_window_bits + 2))
                + (1 << (self.mem_level + 9))
            )
        if peak or self._decompressor is not None:
            total += _INFLATE_STATE_BYTES + (1 << self.remote_max_window_bits)
        return total + len(self._tail)
