"""Extension negotiation (RFC 6455 section 9).

The client offers extensions in Sec-WebSocket-Extensions; the server answers
with the ones it accepts and their parameters; both sides then run the agreed
extension instances.  This module is the generic part: factories decide
about parameters, :func:`negotiate_server` and :func:`negotiate_client` apply
the rules every extension shares.  Concrete extensions (permessage-deflate,
RFC 7692) implement :class:`Extension` and the two factory classes.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from typing import Protocol

from tidewire.errors import HandshakeError
from tidewire.protocol.handshake import (
    ExtensionParams,
    parse_extension_header,
    serialize_extension_header,
)

__all__ = [
    "Extension",
    "ServerExtensionFactory",
    "ClientExtensionFactory",
    "negotiate_server",
    "negotiate_client",
    "build_client_offer",
]


class Extension(Protocol):
    """A negotiated extension instance (RFC 6455 section 9).

    ``name`` is its registered token; ``rsv1``/``rsv2``/``rsv3`` say which RSV
    bits of the frame header it gives a meaning to (section 5.2: a bit no
    extension claims must be 0).  Plain attributes satisfy these members.
    """

    @property
    def name(self) -> str:
        """The extension token, e.g. ``permessage-deflate``."""
        ...

    @property
    def rsv1(self) -> bool:
        """True when the extension uses RSV1."""
        ...

    @property
    def rsv2(self) -> bool:
        """True when the extension uses RSV2."""
        ...

    @property
    def rsv3(self) -> bool:
        """True when the extension uses RSV3."""
        ...


class ServerExtensionFactory(abc.ABC):
    """Server side of one extension: picks an offer, answers with parameters."""

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """The extension token this factory handles (a class attribute will do)."""

    @abc.abstractmethod
    def accept(self, offers: list[ExtensionParams]) -> tuple[ExtensionParams, Extension] | None:
        """Choose among the client's offers of this extension, in the client's order.

        Return the parameters for the response and the extension instance, or
        None to decline (RFC 6455 section 9.1: the server may accept any one
        offer or none).  Raise HandshakeError only if the handshake must fail.
        """


class ClientExtensionFactory(abc.ABC):
    """Client side of one extension: makes the offer, checks the answer."""

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """The extension token this factory handles (a class attribute will do)."""

    @abc.abstractmethod
    def offer(self) -> ExtensionParams:
        """The parameters to offer in the request."""

    @abc.abstractmethod
    def accept(self, params: ExtensionParams) -> Extension:
        """Build the extension from the server's parameters.

        Raise HandshakeError (status 502) when they are unacceptable; the
        client must then fail the connection (RFC 6455 section 9.1).
        """


def _rsv_bits(extension: Extension) -> tuple[bool, bool, bool]:
    return (extension.rsv1, extension.rsv2, extension.rsv3)


def _conflicts(extension: Extension, used: list[bool]) -> bool:
    return any(mine and taken for mine, taken in zip(_rsv_bits(extension), used, strict=True))


def _claim(extension: Extension, used: list[bool]) -> None:
    for bit, mine in enumerate(_rsv_bits(extension)):
        used[bit] = used[bit] or mine


def negotiate_server(
    header_values: Iterable[str], factories: Sequence[ServerExtensionFactory]
) -> tuple[str | None, list[Extension]]:
    """Answer the client's Sec-WebSocket-Extensions (RFC 6455 sections 4.2.2 and 9.1).

    Offers are grouped by extension name, keeping the client's order; each
    factory, in the server's order, sees every offer of its name and may
    accept one.  An extension whose RSV bits collide with one accepted before
    it is declined.  Returns the response header value (None when nothing was
    accepted) and the accepted extensions in the order they were accepted.
    A malformed header raises HandshakeError 400.
    """
    try:
        offered = parse_extension_header(header_values)
    except ValueError as exc:
        raise HandshakeError(f"invalid Sec-WebSocket-Extensions header: {exc}", 400) from None
    if not offered:
        return None, []
    offers_by_name: dict[str, list[ExtensionParams]] = {}
    for name, params in offered:
        offers_by_name.setdefault(name, []).append(params)
    answer: list[tuple[str, ExtensionParams]] = []
    accepted: list[Extension] = []
    used = [False, False, False]
    for factory in factories:
        offers = offers_by_name.get(factory.name)
        if not offers or any(name == factory.name for name, _ in answer):
            continue
        result = factory.accept(offers)
        if result is None:
            continue
        params, extension = result
        if _conflicts(extension, used):
            continue
        _claim(extension, used)
        answer.append((factory.name, params))
        accepted.append(extension)
    if not answer:
        return None, []
    return serialize_extension_header(answer), accepted


def negotiate_client(
    response_header_values: Iterable[str], factories: Sequence[ClientExtensionFactory]
) -> list[Extension]:
    """Check the server's Sec-WebSocket-Extensions against the offer (RFC 6455 section 9.1).

    Every extension in the response must be one a factory offered, each at
    most once, with RSV bits no earlier one claimed; the factory builds the
    instance from the parameters.  Any violation raises HandshakeError 502.
    Returns the extensions in the order of the response.
    """
    try:
        answered = parse_extension_header(response_header_values)
    except ValueError as exc:
        raise HandshakeError(f"invalid Sec-WebSocket-Extensions header: {exc}", 502) from None
    by_name: dict[str, ClientExtensionFactory] = {}
    for factory in factories:
        by_name.setdefault(factory.name, factory)
    extensions: list[Extension] = []
    seen: set[str] = set()
    used = [False, False, False]
    for name, params in answered:
        if name in seen:
            raise HandshakeError(f"server accepted extension {name!r} more than once", 502)
        seen.add(name)
        offered = by_name.get(name)
        if offered is None:
            raise HandshakeError(f"server accepted extension {name!r}, which was not offered", 502)
        extension = offered.accept(params)
        if _conflicts(extension, used):
            raise HandshakeError(
                f"extension {name!r} uses an RSV bit an earlier extension already uses", 502
            )
        _claim(extension, used)
        extensions.append(extension)
    return extensions


def build_client_offer(factories: Sequence[ClientExtensionFactory]) -> str | None:
    """The Sec-WebSocket-Extensions value offering every factory, or None if none."""
    if not factories:
        return None
    return serialize_extension_header([(factory.name, factory.offer()) for factory in factories])
