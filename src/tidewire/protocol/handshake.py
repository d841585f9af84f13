"""The WebSocket opening handshake (RFC 6455 section 4).

Keys and accept values, the server's checks of a client request, the client's
checks of a server response, and the grammars of the Sec-WebSocket-Protocol
and Sec-WebSocket-Extensions headers.  Every parser here is linear in its
input: splits, ``str`` methods and regexes of single character classes only,
no pattern that can backtrack (the ReDoS lesson of CVE-2021-32640).

Failures raise :class:`~tidewire.errors.HandshakeError` whose ``status`` is
the HTTP status to answer with (server side) or 502 (client side: the server
misbehaved), and :class:`~tidewire.errors.InvalidStatus` when the server did
not answer 101.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
import sys
from collections.abc import Iterable
from typing import TypeAlias
from urllib.parse import urlsplit

from tidewire.errors import HandshakeError, InvalidStatus
from tidewire.protocol.http import Headers, HeadersLike, Request, Response

__all__ = [
    "GUID",
    "SEC_WEBSOCKET_VERSION",
    "WEBSOCKET_VERSION",
    "USER_AGENT",
    "SERVER",
    "ExtensionParams",
    "ExtensionList",
    "generate_key",
    "accept_key",
    "parse_tokens",
    "parse_extension_header",
    "serialize_extension_header",
    "parse_subprotocol_header",
    "is_upgrade_request",
    "check_request",
    "build_request",
    "build_accept_response",
    "build_reject_response",
    "check_response",
    "select_subprotocol",
]

#: RFC 6455 section 1.3: appended to the key before hashing.
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: RFC 6455 section 4.2.2: a 426 answer names the versions the server speaks.
SEC_WEBSOCKET_VERSION = "Sec-WebSocket-Version"
#: The only version RFC 6455 defines (section 4.1).
WEBSOCKET_VERSION = "13"

#: Default User-Agent of the client; identifies us in server logs.
USER_AGENT = f"tidewire Python/{sys.version_info.major}.{sys.version_info.minor}"
#: Server header of a 101 answer.
SERVER = "tidewire"

#: Parameters of one extension: ``(name, value or None)`` in order.
ExtensionParams: TypeAlias = list[tuple[str, str | None]]
#: A parsed Sec-WebSocket-Extensions header: ``(extension name, params)`` in order.
ExtensionList: TypeAlias = list[tuple[str, ExtensionParams]]

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_OWS = " \t"
# Lexer for the extension header: one alternative per lexeme, alternatives
# start with disjoint characters, so matching never backtracks.  The
# quoted-string body is (qdtext | quoted-pair)* of RFC 9110 section 5.6.4.
_EXT_LEXEME = re.compile(
    r"""[ \t]*(?:
        (?P<token>[!#$%&'*+\-.^_`|~0-9A-Za-z]+)
      | "(?P<quoted>(?:[\t !\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t\x20-\x7e\x80-\xff])*)"
      | (?P<sep>[,;=])
    )""",
    re.VERBOSE,
)
_QUOTED_PAIR = re.compile(r"\\(.)")


def _show(text: str, limit: int = 60) -> str:
    """A bounded, one-line repr of peer data for error messages."""
    if len(text) > limit:
        return repr(text[:limit]) + "..."
    return repr(text)


def generate_key() -> str:
    """A fresh Sec-WebSocket-Key: 16 random bytes, base64 (RFC 6455 section 4.1)."""
    return base64.b64encode(secrets.token_bytes(16)).decode("ascii")


def accept_key(key: str) -> str:
    """The Sec-WebSocket-Accept value for ``key`` (RFC 6455 section 4.2.2 step 5.4)."""
    digest = hashlib.sha1((key + GUID).encode("ascii"), usedforsecurity=False).digest()
    return base64.b64encode(digest).decode("ascii")


def _split_list(value: str) -> list[str]:
    """Elements of an RFC 9110 section 5.6.1 list, OWS trimmed, empty ones skipped."""
    return [item for item in (part.strip(_OWS) for part in value.split(",")) if item]


def parse_tokens(value: str) -> list[str]:
    """Parse ``#token`` (RFC 9110 section 5.6.1): a comma list of tokens.

    Case is preserved, empty elements are skipped; anything that is not a
    token raises ValueError.  Linear time.
    """
    items = _split_list(value)
    for item in items:
        if not _TOKEN.fullmatch(item):
            raise ValueError(f"invalid token {_show(item)} in {_show(value)}")
    return items


def _lex_extensions(value: str) -> list[tuple[str, str]]:
    """Cut an extension header into ``(kind, text)`` lexemes; kind is t, q or the separator."""
    lexemes: list[tuple[str, str]] = []
    pos = 0
    end = len(value.rstrip(_OWS))
    while pos < end:
        match = _EXT_LEXEME.match(value, pos, end)
        if match is None:
            rest = value[pos:end].lstrip(_OWS)
            if rest.startswith('"'):
                raise ValueError(f"unterminated or invalid quoted-string at {_show(rest)}")
            raise ValueError(f"unexpected character {rest[0]!r} at {_show(rest)}")
        token, quoted, sep = match.group("token", "quoted", "sep")
        if token is not None:
            lexemes.append(("t", token))
        elif quoted is not None:
            lexemes.append(("q", _QUOTED_PAIR.sub(r"\1", quoted)))
        else:
            lexemes.append((sep, sep))
        pos = match.end()
    return lexemes


def parse_extension_header(values: Iterable[str]) -> ExtensionList:
    """Parse Sec-WebSocket-Extensions values (RFC 6455 section 9.1).

    ``extension-list = 1#extension``, ``extension = name *(";" param)``,
    ``param = token ["=" (token | quoted-string)]``; a quoted value must be a
    token once unquoted.  OWS is allowed around separators and empty list
    elements are skipped; an empty or absent header gives ``[]``.  Raises
    ValueError with a one-line reason on bad syntax.  Linear time.
    """
    joined = ",".join(values)
    lexemes = _lex_extensions(joined)
    result: ExtensionList = []
    i = 0
    n = len(lexemes)
    while i < n:
        kind, text = lexemes[i]
        if kind == ",":
            i += 1
            continue
        if kind != "t":
            raise ValueError(f"expected an extension name, got {_show(text)} in {_show(joined)}")
        name = text
        params: ExtensionParams = []
        i += 1
        while i < n and lexemes[i][0] == ";":
            i += 1
            if i >= n or lexemes[i][0] != "t":
                raise ValueError(f"expected a parameter name after ';' in extension {name!r}")
            param = lexemes[i][1]
            i += 1
            param_value: str | None = None
            if i < n and lexemes[i][0] == "=":
                i += 1
                if i >= n or lexemes[i][0] not in ("t", "q"):
                    raise ValueError(f"expected a value after '{param}=' in extension {name!r}")
                param_value = lexemes[i][1]
                if lexemes[i][0] == "q" and not _TOKEN.fullmatch(param_value):
                    raise ValueError(
                        f"quoted value {_show(param_value)} of '{param}' in extension {name!r}"
                        " is not a token"
                    )
                i += 1
            params.append((param, param_value))
        if i < n and lexemes[i][0] != ",":
            raise ValueError(
                f"expected ',' or ';' after extension {name!r}, got {_show(lexemes[i][1])}"
            )
        result.append((name, params))
    return result


def serialize_extension_header(extensions: Iterable[tuple[str, ExtensionParams]]) -> str:
    """Format a Sec-WebSocket-Extensions value (RFC 6455 section 9.1).

    Names, parameter names and values must be tokens (ValueError otherwise),
    so the result is safe in a header and parses back to the same list.
    """
    parts: list[str] = []
    for name, params in extensions:
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"invalid extension name {_show(name)}: must be a token")
        items = [name]
        for param, value in params:
            if not _TOKEN.fullmatch(param):
                raise ValueError(f"invalid parameter name {_show(param)} in extension {name!r}")
            if value is None:
                items.append(param)
            elif _TOKEN.fullmatch(value):
                items.append(f"{param}={value}")
            else:
                raise ValueError(
                    f"invalid value {_show(value)} of '{param}' in extension {name!r}:"
                    " must be a token"
                )
        parts.append("; ".join(items))
    return ", ".join(parts)


def parse_subprotocol_header(values: Iterable[str]) -> list[str]:
    """Parse Sec-WebSocket-Protocol values (RFC 6455 section 11.3.4: ``1#token``).

    An empty or absent header gives ``[]``; a non-token raises ValueError.
    """
    return parse_tokens(",".join(values))


def is_upgrade_request(request: Request) -> bool:
    """True when the request carries an Upgrade header at all.

    A request without one is plain HTTP: the transport may route it elsewhere
    (health checks, static files).  A request with one goes to
    :func:`check_request`, which refuses it if it does not ask for websocket.
    """
    return "Upgrade" in request.headers


def _at_most_one(headers: Headers, name: str, status: int) -> str | None:
    values = headers.get_all(name)
    if len(values) > 1:
        raise HandshakeError(f"duplicate {name} header: {len(values)} values", status)
    return values[0] if values else None


def _exactly_one(headers: Headers, name: str, status: int) -> str:
    value = _at_most_one(headers, name, status)
    if value is None:
        raise HandshakeError(f"missing {name} header", status)
    return value


def _has_token(headers: Headers, name: str, wanted: str, status: int) -> None:
    """Require ``wanted`` (lowercase) among the comma-list elements of ``name``."""
    values = headers.get_all(name)
    if not values:
        raise HandshakeError(f"missing {name} header", status)
    joined = ", ".join(values)
    if wanted not in (item.lower() for item in _split_list(joined)):
        raise HandshakeError(f"{name} header is {_show(joined)}: no {wanted!r} token", status)


def check_request(request: Request) -> str:
    """Validate a client opening handshake (RFC 6455 section 4.2.1); return its key.

    Status of the HandshakeError raised on failure:

    * 405 when the method is not GET (the reject response carries Allow: GET);
    * 400 for a missing or duplicate Host, an Upgrade header without
      ``websocket``, a Connection header without ``upgrade``, a missing,
      duplicate or malformed Sec-WebSocket-Key (must be base64 of 16 bytes),
      a duplicate Sec-WebSocket-Version or Origin, a request target that is
      neither origin-form nor an absolute URI, or a body (Content-Length other
      than 0, or any Transfer-Encoding: the bytes after the head are frames);
    * 426 when Sec-WebSocket-Version is missing or not 13 (section 4.2.2: the
      answer names the version we speak; see :func:`build_reject_response`).

    The version is checked before the key so pre-RFC clients learn about 426.
    """
    if request.method != "GET":
        raise HandshakeError(f"method {request.method} not allowed: expected GET", 405)
    target = request.path
    if not target.startswith("/"):
        try:
            scheme = urlsplit(target).scheme.lower()
        except ValueError:
            scheme = ""
        if scheme not in ("http", "https", "ws", "wss"):
            raise HandshakeError(f"invalid request target {_show(target)} for WebSocket", 400)
    headers = request.headers
    _exactly_one(headers, "Host", 400)
    _has_token(headers, "Upgrade", "websocket", 400)
    _has_token(headers, "Connection", "upgrade", 400)
    versions = headers.get_all(SEC_WEBSOCKET_VERSION)
    if len(versions) > 1:
        raise HandshakeError(f"duplicate {SEC_WEBSOCKET_VERSION} header: {versions!r}", 400)
    if not versions:
        raise HandshakeError(
            f"missing {SEC_WEBSOCKET_VERSION} header: expected {WEBSOCKET_VERSION}", 426
        )
    if versions[0] != WEBSOCKET_VERSION:
        raise HandshakeError(
            f"unsupported {SEC_WEBSOCKET_VERSION} {_show(versions[0])}: "
            f"expected {WEBSOCKET_VERSION}",
            426,
        )
    key = _exactly_one(headers, "Sec-WebSocket-Key", 400)
    try:
        raw = base64.b64decode(key.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raw = b""
    if len(raw) != 16:
        raise HandshakeError(
            f"invalid Sec-WebSocket-Key {_show(key)}: must be base64 of 16 bytes", 400
        )
    _at_most_one(headers, "Origin", 400)
    if "Transfer-Encoding" in headers:
        raise HandshakeError("a WebSocket handshake request cannot have a body: Transfer-Encoding")
    lengths = headers.get_all("Content-Length")
    if lengths and lengths != ["0"]:
        raise HandshakeError(
            f"a WebSocket handshake request cannot have a body: Content-Length {lengths!r}"
        )
    return key


def _extra(headers: Headers, extra_headers: HeadersLike) -> None:
    if extra_headers is not None:
        for name, value in Headers(extra_headers):
            headers.add(name, value)


def build_request(
    host: str,
    path: str,
    key: str,
    *,
    origin: str | None = None,
    subprotocols: Iterable[str] | None = None,
    extensions: str | None = None,
    extra_headers: HeadersLike = None,
    user_agent: str | None = USER_AGENT,
) -> Request:
    """The client's opening handshake request (RFC 6455 section 4.1).

    ``host`` is the Host value (with ``:port`` when not the default), ``path``
    the resource name with its query.  Subprotocols must be tokens; ``extensions``
    is a ready Sec-WebSocket-Extensions value.  ``extra_headers`` are appended
    last.  Raises ValueError for values that would break the request.
    """
    if not path.startswith("/"):
        raise ValueError(f"invalid resource name {_show(path)}: must start with '/'")
    headers = Headers()
    headers.add("Host", host)
    headers.add("Upgrade", "websocket")
    headers.add("Connection", "Upgrade")
    headers.add("Sec-WebSocket-Key", key)
    headers.add(SEC_WEBSOCKET_VERSION, WEBSOCKET_VERSION)
    if origin is not None:
        headers.add("Origin", origin)
    if subprotocols:
        offered = list(subprotocols)
        for subprotocol in offered:
            if not _TOKEN.fullmatch(subprotocol):
                raise ValueError(f"invalid subprotocol {_show(subprotocol)}: must be a token")
        headers.add("Sec-WebSocket-Protocol", ", ".join(offered))
    if extensions:
        headers.add("Sec-WebSocket-Extensions", extensions)
    if user_agent is not None:
        headers.add("User-Agent", user_agent)
    _extra(headers, extra_headers)
    request = Request("GET", path, headers)
    request.serialize()  # validates the request line now, not when it is sent
    return request


def build_accept_response(
    key: str,
    *,
    subprotocol: str | None = None,
    extensions: str | None = None,
    extra_headers: HeadersLike = None,
) -> Response:
    """The server's 101 Switching Protocols answer (RFC 6455 section 4.2.2 step 5)."""
    headers = Headers()
    headers.add("Upgrade", "websocket")
    headers.add("Connection", "Upgrade")
    headers.add("Sec-WebSocket-Accept", accept_key(key))
    if subprotocol is not None:
        if not _TOKEN.fullmatch(subprotocol):
            raise ValueError(f"invalid subprotocol {_show(subprotocol)}: must be a token")
        headers.add("Sec-WebSocket-Protocol", subprotocol)
    if extensions:
        headers.add("Sec-WebSocket-Extensions", extensions)
    headers.add("Server", SERVER)
    _extra(headers, extra_headers)
    return Response(101, "Switching Protocols", headers)


def build_reject_response(status: int, message: str) -> Response:
    """An error answer to a failed handshake (RFC 6455 section 4.2.1, last paragraph).

    The body is ``message`` as one line of text; Connection: close.  A 426
    carries ``Sec-WebSocket-Version: 13`` (section 4.2.2) and Upgrade: websocket
    (RFC 9110 section 15.5.22); a 405 carries Allow: GET (section 15.5.6).
    """
    line = " ".join(message.splitlines())
    headers = Headers()
    if status == 426:
        headers.add(SEC_WEBSOCKET_VERSION, WEBSOCKET_VERSION)
        headers.add("Upgrade", "websocket")
        headers.add("Connection", "Upgrade, close")
    elif status == 405:
        headers.add("Allow", "GET")
    return Response.build(status, (line + "\n").encode("utf-8"), headers)


def check_response(
    response: Response, key: str, *, offered_subprotocols: Iterable[str] | None
) -> tuple[str | None, ExtensionList]:
    """Validate the server's answer (RFC 6455 section 4.1, client requirements).

    Returns the subprotocol the server chose (or None) and the extensions of
    its Sec-WebSocket-Extensions header, still to be matched against the
    offer by :func:`tidewire.protocol.extensions.negotiate_client`.  Raises
    InvalidStatus when the status is not 101, HandshakeError (status 502)
    naming the header and what was seen for anything else.
    """
    status = response.status
    if status != 101:
        raise InvalidStatus(
            f"server rejected WebSocket connection: HTTP {status}", response, status
        )
    headers = response.headers
    upgrade = ", ".join(headers.get_all("Upgrade"))
    if [item.lower() for item in _split_list(upgrade)] != ["websocket"]:
        seen = _show(upgrade) if upgrade else "missing"
        raise HandshakeError(f"Upgrade header is {seen}: expected 'websocket'", 502)
    _has_token(headers, "Connection", "upgrade", 502)
    accept = _exactly_one(headers, "Sec-WebSocket-Accept", 502)
    expected = accept_key(key)
    if accept != expected:
        raise HandshakeError(f"Sec-WebSocket-Accept is {_show(accept)}: expected {expected!r}", 502)
    try:
        extensions = parse_extension_header(headers.get_all("Sec-WebSocket-Extensions"))
    except ValueError as exc:
        raise HandshakeError(f"invalid Sec-WebSocket-Extensions header: {exc}", 502) from None
    try:
        chosen = parse_subprotocol_header(headers.get_all("Sec-WebSocket-Protocol"))
    except ValueError as exc:
        raise HandshakeError(f"invalid Sec-WebSocket-Protocol header: {exc}", 502) from None
    if len(chosen) > 1:
        raise HandshakeError(
            f"server chose more than one subprotocol: Sec-WebSocket-Protocol {chosen!r}", 502
        )
    subprotocol = chosen[0] if chosen else None
    if subprotocol is not None:
        offered = list(offered_subprotocols or ())
        if subprotocol not in offered:
            raise HandshakeError(
                f"server chose subprotocol {subprotocol!r}, which was not offered"
                f" (offered {offered!r})",
                502,
            )
    return subprotocol, extensions


def select_subprotocol(client_offer: Iterable[str], server_supported: Iterable[str]) -> str | None:
    """The first of ``server_supported`` the client offered (RFC 6455 section 4.2.2 step 5.4).

    The server's preference order wins; names compare case-sensitively.
    """
    offered = set(client_offer)
    for subprotocol in server_supported:
        if subprotocol in offered:
            return subprotocol
    return None
