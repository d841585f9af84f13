"""HTTP/1.1 message heads for the opening handshake (RFC 9110, RFC 9112).

Sans-I/O: :func:`parse_request` and :func:`parse_response` take the bytes
received so far and return ``None`` until the head (ending in CRLF CRLF) is
complete.  Bodies are never read here; :func:`request_body_size` says how many
body bytes follow a request head (Content-Length framing only).  Every size
limit is checked as soon as the buffer exceeds it, so a peer cannot make us
buffer an endless head.

Strictness (RFC 9112 sections 2.2, 3, 5): only ``HTTP/1.1`` requests, token
method and field names, no whitespace before the colon, no obsolete line
folding, no bare CR or LF, no control characters other than HTAB.

Status codes a request can fail with (:class:`~tidewire.errors.HandshakeError`):

* 400: malformed request line or header line, bare CR/LF, obsolete folding;
* 414: request line longer than ``max_line`` (almost always a huge URI);
* 431: a header line longer than ``max_line``, more than ``max_headers`` header
  lines, or a head longer than ``max_head``;
* 411: a request body framed with Transfer-Encoding (only Content-Length is
  read); 413: a Content-Length over ``max_body``;
* 505: a well-formed HTTP version other than ``HTTP/1.1`` (RFC 6455 section
  4.1 requires HTTP/1.1; HTTP/1.0 has no Upgrade).

A bad response always fails with status 502: the server misbehaved.
"""

from __future__ import annotations

import http
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeAlias
from urllib.parse import parse_qs, urlsplit

from tidewire.errors import HandshakeError

__all__ = [
    "MAX_LINE_BYTES",
    "MAX_HEADERS",
    "MAX_HEADER_BYTES",
    "MAX_BODY_BYTES",
    "Headers",
    "HeadersLike",
    "Request",
    "Response",
    "parse_request",
    "parse_response",
    "request_body_size",
]

#: Longest request line, status line or header line, CRLF excluded.  8 KiB is
#: what nginx (large_client_header_buffers) and most servers accept per line.
MAX_LINE_BYTES = 8192

#: Most header lines in one head.  Browsers send about 15 on a handshake; 128
#: leaves room for proxies while bounding the work per request.
MAX_HEADERS = 128

#: Longest whole head, start line through the blank line.  16 KiB fits browsers
#: with big cookies; nginx uses 8 KiB per line, so one fat Cookie still fits.
MAX_HEADER_BYTES = 16384

#: Largest plain-HTTP request body.  Bodies are read whole before the route runs
#: (an HTTP API's JSON), so the limit is what one request can pin: 64 KiB, as
#: the realtime layer's largest client message.
MAX_BODY_BYTES = 65536

HeadersLike: TypeAlias = "Headers | Mapping[str, str] | Iterable[tuple[str, str]] | None"

# RFC 9110 section 5.6.2: token = 1*tchar.  A single character class, so
# matching is linear in the input (no backtracking).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 section 5.5: field values may hold HTAB, SP, VCHAR and obs-text.
# Anything else that is a control character is refused; so are characters that
# do not fit in one octet (they could not be sent).
_BAD_VALUE_CHAR = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]|[^\x00-\xff]")
# Control characters in a received head other than HTAB, CR and LF (CR and LF
# are checked separately: they must come as CRLF pairs).
_BAD_HEAD_BYTE = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# RFC 9112 section 3.2: request-target characters (VCHAR; no SP, CTL, obs-text).
_BAD_TARGET_CHAR = re.compile(r"[^\x21-\x7e]")
_HTTP_VERSION = re.compile(r"HTTP/[0-9]\.[0-9]")
_STATUS_CODE = re.compile(r"[0-9]{3}")
_OWS = " \t"
_DIGITS = re.compile(r"[0-9]{1,18}")


def _show(text: str | bytes, limit: int = 60) -> str:
    """A bounded, one-line repr of peer data for error messages."""
    if len(text) > limit:
        return repr(text[:limit]) + "..."
    return repr(text)


def _check_header(name: str, value: str) -> None:
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"invalid header name {_show(name)}: must be an RFC 9110 token")
    bad = _BAD_VALUE_CHAR.search(value)
    if bad is not None:
        raise ValueError(
            f"invalid value for header {name!r}: character {bad.group()!r} "
            "(CR, LF, NUL, other control characters and non-Latin-1 are refused)"
        )


class Headers:
    """Case-insensitive multidict of HTTP fields, preserving order and case.

    RFC 9110 section 5: field names are case-insensitive, a field may appear
    several times and the order of its values matters.  Iterating yields
    ``(name, value)`` pairs as given.  Adding a field whose name is not a token
    or whose value holds CR, LF, NUL or another control character raises
    ``ValueError``: that is what stops header injection.
    """

    __slots__ = ("_items", "_index")

    _items: list[tuple[str, str]]
    _index: dict[str, list[str]]

    def __init__(self, headers: HeadersLike = None) -> None:
        self._items = []
        self._index = {}
        if headers is None:
            return
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        for name, value in pairs:
            self.add(name, value)

    @classmethod
    def _from_parsed(cls, pairs: list[tuple[str, str]]) -> Headers:
        """Build from pairs the parser already validated (no second check)."""
        self = cls.__new__(cls)
        self._items = pairs
        index: dict[str, list[str]] = {}
        for name, value in pairs:
            key = name.lower()
            values = index.get(key)
            if values is None:
                index[key] = [value]
            else:
                values.append(value)
        self._index = index
        return self

    def add(self, name: str, value: str) -> None:
        """Append a field, keeping any existing ones with the same name."""
        _check_header(name, value)
        self._items.append((name, value))
        self._index.setdefault(name.lower(), []).append(value)

    def __setitem__(self, name: str, value: str) -> None:
        """Replace every field called ``name`` with one field."""
        _check_header(name, value)
        if name.lower() in self._index:
            del self[name]
        self._items.append((name, value))
        self._index[name.lower()] = [value]

    def __delitem__(self, name: str) -> None:
        """Remove every field called ``name``; KeyError if there is none."""
        key = name.lower()
        del self._index[key]
        self._items = [item for item in self._items if item[0].lower() != key]

    def __getitem__(self, name: str) -> str:
        """The first value of ``name``; KeyError if absent."""
        return self._index[name.lower()][0]

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name``, or ``default``."""
        values = self._index.get(name.lower())
        return default if values is None else values[0]

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name`` in order (empty list if absent)."""
        return list(self._index.get(name.lower(), ()))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._index

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def items(self) -> list[tuple[str, str]]:
        """Every ``(name, value)`` pair, in order, names as given."""
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def copy(self) -> Headers:
        """An independent copy."""
        return Headers._from_parsed(list(self._items))

    def serialize(self) -> bytes:
        """The field lines, each ending in CRLF, without the final blank line."""
        return "".join([f"{name}: {value}\r\n" for name, value in self._items]).encode("latin-1")

    def __eq__(self, other: object) -> bool:
        """Equal when each name (case-insensitively) has the same values in order."""
        if not isinstance(other, Headers):
            return NotImplemented
        return self._index == other._index

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


def _split_target(target: str) -> tuple[str, str]:
    """Split a request-target (RFC 9112 section 3.2) into path and query."""
    if target.startswith("/"):
        path, _, query = target.partition("?")
        return path, query
    try:
        parts = urlsplit(target)
    except ValueError:
        return target, ""
    return parts.path or "/", parts.query


@dataclass(frozen=True, slots=True)
class Request:
    """An HTTP/1.1 request head (RFC 9112 section 3); ``path`` is the raw target."""

    method: str
    path: str
    headers: Headers
    body: bytes = b""

    @property
    def path_only(self) -> str:
        """The path without the query (the resource name of RFC 6455 section 3)."""
        return _split_target(self.path)[0]

    @property
    def query(self) -> dict[str, list[str]]:
        """The query string decoded by :func:`urllib.parse.parse_qs`."""
        return parse_qs(_split_target(self.path)[1])

    def serialize(self) -> bytes:
        """The request as bytes; ValueError if the method or target is unsafe."""
        if not _TOKEN.fullmatch(self.method):
            raise ValueError(f"invalid request method {_show(self.method)}: must be a token")
        if not self.path or _BAD_TARGET_CHAR.search(self.path):
            raise ValueError(f"invalid request target {_show(self.path)}: must be visible ASCII")
        line = f"{self.method} {self.path} HTTP/1.1\r\n".encode("ascii")
        return line + self.headers.serialize() + b"\r\n" + self.body


@dataclass(frozen=True, slots=True)
class Response:
    """An HTTP/1.1 response (RFC 9112 section 4)."""

    status: int
    reason: str
    headers: Headers
    body: bytes = b""

    @classmethod
    def build(
        cls,
        status: int,
        body: bytes = b"",
        headers: HeadersLike = None,
        content_type: str | None = "text/plain; charset=utf-8",
    ) -> Response:
        """A response with the standard reason phrase and framing headers.

        ``headers`` come first and win, except Content-Length which is always
        computed.  Content-Type is added for a non-empty body; Connection: close
        for everything but 101 (the connection is not reused after a failed
        handshake).  1xx and 204 responses carry no Content-Length (RFC 9110
        section 8.6) and must have no body.
        """
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = ""
        result = Headers(headers)
        if status < 200 or status == 204:
            if body:
                raise ValueError(f"a {status} response cannot have a body ({len(body)} bytes)")
        else:
            result["Content-Length"] = str(len(body))
        if body and content_type is not None and "Content-Type" not in result:
            result.add("Content-Type", content_type)
        if status != 101 and "Connection" not in result:
            result.add("Connection", "close")
        return cls(status, reason, result, body)

    def serialize(self) -> bytes:
        """The response as bytes; ValueError if the status or reason is unsafe."""
        if not 100 <= self.status <= 999:
            raise ValueError(f"invalid status code {self.status}: must have three digits")
        bad = _BAD_VALUE_CHAR.search(self.reason)
        if bad is not None:
            raise ValueError(f"invalid reason phrase {_show(self.reason)}: {bad.group()!r}")
        line = f"HTTP/1.1 {self.status} {self.reason}\r\n".encode("latin-1")
        return line + self.headers.serialize() + b"\r\n" + self.body


def _limit(value: int | None) -> int:
    return sys.maxsize if value is None else value


def _split_head(
    buf: bytes | bytearray,
    max_line: int,
    max_headers: int,
    max_head: int,
    *,
    what: str,
    start_line: str,
    line_status: int,
    size_status: int,
    syntax_status: int,
) -> tuple[list[str], int] | None:
    """Find the end of the head and cut it into lines; check every limit.

    Returns None while the head is incomplete and within limits, otherwise the
    decoded lines (start line first) and the number of bytes consumed.
    """
    end = buf.find(b"\r\n\r\n", 0, max_head)
    if end == -1:
        size = len(buf)
        if size >= max_head:
            raise HandshakeError(
                f"{what} head too big: no end of head within max_head={max_head} bytes",
                size_status,
            )
        # The head is incomplete: fail early on anything already over a limit,
        # so a peer cannot hold a connection open with a head that must fail.
        lf = buf.count(b"\n")
        crlf = buf.count(b"\r\n")
        if lf != crlf:
            raise HandshakeError(f"bare LF in {what} head; lines must end in CRLF", syntax_status)
        if buf.count(b"\r") - buf.endswith(b"\r") != crlf:
            raise HandshakeError(f"bare CR in {what} head", syntax_status)
        pending_lf = buf.endswith(b"\r")  # the LF of the last line's CRLF is still to come
        last_crlf = buf.rfind(b"\r\n")
        tail = size - (0 if last_crlf == -1 else last_crlf + 2) - pending_lf
        # Complete header lines, plus the one being received unless it may
        # still turn out to be the blank line that ends the head.
        if crlf - 1 + (crlf >= 1 and tail > 0) > max_headers:
            raise HandshakeError(
                f"too many headers in {what}: more than max_headers={max_headers}", size_status
            )
        if size <= max_line:  # no line can be too long yet: skip the split
            return None
        lengths = [len(line) for line in buf.split(b"\r\n")]
        lengths[-1] = tail
        if lengths[0] > max_line:
            raise HandshakeError(
                f"{start_line} too long: at least {lengths[0]} bytes > max_line={max_line}",
                line_status,
            )
        longest = max(lengths)
        if longest > max_line:
            raise HandshakeError(
                f"header line too long: at least {longest} bytes > max_line={max_line}",
                size_status,
            )
        return None

    head = buf[:end]
    crlf = head.count(b"\r\n")
    if head.count(b"\n") != crlf:
        raise HandshakeError(f"bare LF in {what} head; lines must end in CRLF", syntax_status)
    if head.count(b"\r") != crlf:
        raise HandshakeError(f"bare CR in {what} head", syntax_status)
    if crlf > max_headers:
        raise HandshakeError(
            f"too many headers in {what}: {crlf} > max_headers={max_headers}", size_status
        )
    bad = _BAD_HEAD_BYTE.search(head)
    if bad is not None:
        raise HandshakeError(
            f"control character 0x{bad.group()[0]:02x} at byte {bad.start()} of {what} head",
            syntax_status,
        )
    lines = bytes(head).decode("latin-1").split("\r\n")
    if len(lines[0]) > max_line:
        raise HandshakeError(
            f"{start_line} too long: {len(lines[0])} bytes > max_line={max_line}", line_status
        )
    for line in lines[1:]:
        if len(line) > max_line:
            raise HandshakeError(
                f"header line too long: {len(line)} bytes > max_line={max_line}", size_status
            )
    return lines, end + 4


def _parse_fields(lines: list[str], status: int) -> Headers:
    """Parse field lines (RFC 9112 section 5) into Headers."""
    pairs: list[tuple[str, str]] = []
    for line in lines:
        if line[:1] in (" ", "\t"):
            # RFC 9112 section 5.2: obs-fold; also whitespace before the first
            # field (section 2.2).  Both are refused.
            raise HandshakeError(f"obsolete line folding in header line {_show(line)}", status)
        name, colon, value = line.partition(":")
        if not colon:
            raise HandshakeError(f"header line without a colon: {_show(line)}", status)
        if not _TOKEN.fullmatch(name):
            # Includes whitespace between name and colon (section 5.1: MUST reject).
            raise HandshakeError(f"invalid header name {_show(name)}", status)
        pairs.append((name, value.strip(_OWS)))
    return Headers._from_parsed(pairs)


def parse_request(
    buf: bytes | bytearray,
    *,
    max_line: int | None = MAX_LINE_BYTES,
    max_headers: int | None = MAX_HEADERS,
    max_head: int | None = MAX_HEADER_BYTES,
) -> tuple[Request, int] | None:
    """Parse an HTTP/1.1 request head from the start of ``buf`` (RFC 9112 section 3).

    Returns None while the head is incomplete, else the request (body empty:
    bodies are never read) and the number of bytes the head used.  Raises
    :class:`HandshakeError` with status 400, 414, 431 or 505 (see the module
    docstring) as soon as the bytes seen so far are invalid or over a limit.
    ``None`` disables a limit.
    """
    split = _split_head(
        buf,
        _limit(max_line),
        _limit(max_headers),
        _limit(max_head),
        what="request",
        start_line="request line",
        line_status=414,
        size_status=431,
        syntax_status=400,
    )
    if split is None:
        return None
    lines, consumed = split
    request_line = lines[0]
    parts = request_line.split(" ")
    if len(parts) != 3:
        raise HandshakeError(
            f"malformed request line {_show(request_line)}: expected 'METHOD target HTTP/1.1'",
            400,
        )
    method, target, version = parts
    if version != "HTTP/1.1":
        if _HTTP_VERSION.fullmatch(version):
            raise HandshakeError(f"unsupported HTTP version {version}: expected HTTP/1.1", 505)
        raise HandshakeError(f"malformed HTTP version {_show(version)}", 400)
    if not _TOKEN.fullmatch(method):
        raise HandshakeError(f"invalid request method {_show(method)}", 400)
    if not target or _BAD_TARGET_CHAR.search(target):
        raise HandshakeError(f"invalid request target {_show(target)}", 400)
    headers = _parse_fields(lines[1:], 400)
    return Request(method, target, headers), consumed


def parse_response(
    buf: bytes | bytearray,
    *,
    max_line: int | None = MAX_LINE_BYTES,
    max_headers: int | None = MAX_HEADERS,
    max_head: int | None = MAX_HEADER_BYTES,
) -> tuple[Response, int] | None:
    """Parse an HTTP/1.1 response head from the start of ``buf`` (RFC 9112 section 4).

    Returns None while the head is incomplete, else the response (body empty)
    and the number of bytes the head used.  Any violation or exceeded limit
    raises :class:`HandshakeError` with status 502.  ``HTTP/1.0`` is accepted
    for error responses (proxies send them) so the caller sees the real
    status, but not with 101, which HTTP/1.0 cannot mean.  The reason phrase
    may be missing (RFC 9112 section 4: clients should ignore it).
    """
    split = _split_head(
        buf,
        _limit(max_line),
        _limit(max_headers),
        _limit(max_head),
        what="response",
        start_line="status line",
        line_status=502,
        size_status=502,
        syntax_status=502,
    )
    if split is None:
        return None
    lines, consumed = split
    status_line = lines[0]
    parts = status_line.split(" ", 2)
    if len(parts) < 2:
        raise HandshakeError(
            f"malformed status line {_show(status_line)}: expected 'HTTP/1.1 code reason'", 502
        )
    version, code = parts[0], parts[1]
    reason = parts[2] if len(parts) == 3 else ""
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HandshakeError(f"unsupported HTTP version {_show(version)}: expected HTTP/1.1", 502)
    if not _STATUS_CODE.fullmatch(code) or code[0] == "0":
        raise HandshakeError(f"invalid status code {_show(code)}", 502)
    status = int(code)
    if status == 101 and version != "HTTP/1.1":
        raise HandshakeError(f"101 Switching Protocols in an {version} response", 502)
    headers = _parse_fields(lines[1:], 502)
    return Response(status, reason, headers), consumed


def request_body_size(headers: Headers, max_body: int | None = MAX_BODY_BYTES) -> int:
    """How many body bytes follow a request head (RFC 9112 section 6.3).

    Only Content-Length framing is read: a request without it has no body
    (section 6.3, rule 7).  Raises :class:`HandshakeError` with 411 for any
    Transfer-Encoding (chunked bodies are not read; the client can resend with
    Content-Length, RFC 9110 section 15.5.12), 400 for a Content-Length that is
    not digits or whose values differ (section 6.3, rule 5; identical repeated
    values count once, RFC 9110 section 8.6), and 413 for one over ``max_body``
    (``None`` disables the limit).
    """
    if "Transfer-Encoding" in headers:
        raise HandshakeError(
            "request body with Transfer-Encoding: send it with Content-Length instead", 411
        )
    values = {
        item.strip(_OWS) for value in headers.get_all("Content-Length") for item in value.split(",")
    }
    if not values:
        return 0
    if len(values) > 1 or not _DIGITS.fullmatch(next(iter(values))):
        raise HandshakeError(f"invalid Content-Length {_show(', '.join(sorted(values)))}", 400)
    size = int(values.pop())
    if max_body is not None and size > max_body:
        raise HandshakeError(
            f"request body too big: Content-Length {size} > max_body_size={max_body}", 413
        )
    return size
