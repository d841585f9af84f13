"""Tests for tidewire.protocol.extensions: the RFC 6455 section 9 negotiation framework."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from tidewire.errors import HandshakeError
from tidewire.protocol.extensions import (
    ClientExtensionFactory,
    Extension,
    ServerExtensionFactory,
    build_client_offer,
    negotiate_client,
    negotiate_server,
)
from tidewire.protocol.handshake import ExtensionParams


@dataclass(frozen=True)
class FakeExtension:
    """A negotiated fake extension remembering its parameters."""

    name: str
    params: ExtensionParams = field(default_factory=list)
    rsv1: bool = False
    rsv2: bool = False
    rsv3: bool = False


class FakeServerFactory(ServerExtensionFactory):
    """Accepts the first offer without a ``reject`` parameter, echoing its params."""

    def __init__(self, name: str = "x-fake", *, rsv1: bool = True, rsv2: bool = False) -> None:
        self._name = name
        self.rsv1 = rsv1
        self.rsv2 = rsv2
        self.seen: list[list[ExtensionParams]] = []

    @property
    def name(self) -> str:
        """The extension token."""
        return self._name

    def accept(self, offers: list[ExtensionParams]) -> tuple[ExtensionParams, Extension] | None:
        """Pick the first acceptable offer."""
        self.seen.append(offers)
        for params in offers:
            if all(param != "reject" for param, _ in params):
                return params, FakeExtension(self.name, params, rsv1=self.rsv1, rsv2=self.rsv2)
        return None


class FakeClientFactory(ClientExtensionFactory):
    """Offers fixed params; refuses responses carrying a ``bad`` parameter."""

    name = "x-fake"

    def __init__(
        self, name: str = "x-fake", params: ExtensionParams | None = None, *, rsv1: bool = True
    ) -> None:
        self.name = name
        self.params: ExtensionParams = [("level", "1")] if params is None else params
        self.rsv1 = rsv1

    def offer(self) -> ExtensionParams:
        """The fixed offer."""
        return self.params

    def accept(self, params: ExtensionParams) -> Extension:
        """Build the extension unless the server sent ``bad``."""
        if any(param == "bad" for param, _ in params):
            raise HandshakeError(f"{self.name}: unacceptable parameter 'bad'", 502)
        return FakeExtension(self.name, params, rsv1=self.rsv1)


def test_factories_are_abstract() -> None:
    """A factory missing name or a method cannot be instantiated."""

    class NoName(ServerExtensionFactory):
        def accept(self, offers: list[ExtensionParams]) -> tuple[ExtensionParams, Extension] | None:
            return None

    class NoOffer(ClientExtensionFactory):
        name = "x"

        def accept(self, params: ExtensionParams) -> Extension:
            raise NotImplementedError

    with pytest.raises(TypeError):
        NoName()  # type: ignore[abstract]
    with pytest.raises(TypeError):
        NoOffer()  # type: ignore[abstract]


# Server side


def test_negotiate_server_no_header() -> None:
    """No offer gives no response header and no extension."""
    assert negotiate_server([], [FakeServerFactory()]) == (None, [])
    assert negotiate_server([""], [FakeServerFactory()]) == (None, [])


def test_negotiate_server_accepts_offer() -> None:
    """An accepted offer yields the response header and the instance."""
    header, extensions = negotiate_server(["x-fake; level=1"], [FakeServerFactory()])
    assert header == "x-fake; level=1"
    assert extensions == [FakeExtension("x-fake", [("level", "1")], rsv1=True)]


def test_negotiate_server_groups_offers_in_client_order() -> None:
    """The factory sees every offer of its name, in order, and may pick a later one."""
    factory = FakeServerFactory()
    header, extensions = negotiate_server(
        ["x-fake; reject, other", "x-fake; level=2", "x-fake; level=3"], [factory]
    )
    assert factory.seen == [[[("reject", None)], [("level", "2")], [("level", "3")]]]
    assert header == "x-fake; level=2"
    assert len(extensions) == 1


def test_negotiate_server_ignores_unknown_and_declined() -> None:
    """Unknown extensions are ignored and a declining factory adds nothing."""
    assert negotiate_server(["unknown; a=1"], [FakeServerFactory()]) == (None, [])
    assert negotiate_server(["x-fake; reject"], [FakeServerFactory()]) == (None, [])


def test_negotiate_server_uses_factory_order() -> None:
    """Factories run in the server's order; the response lists them in that order."""
    factories = [FakeServerFactory("b", rsv1=False, rsv2=True), FakeServerFactory("a")]
    header, extensions = negotiate_server(["a, b"], factories)
    assert header == "b, a"
    assert [extension.name for extension in extensions] == ["b", "a"]


def test_negotiate_server_declines_rsv_conflict() -> None:
    """A later extension claiming an RSV bit already in use is declined."""
    factories = [FakeServerFactory("a"), FakeServerFactory("b"), FakeServerFactory("c", rsv1=False)]
    header, extensions = negotiate_server(["a, b, c"], factories)
    assert header == "a, c"
    assert [extension.name for extension in extensions] == ["a", "c"]


def test_negotiate_server_duplicate_factories() -> None:
    """Two factories with one name accept that extension at most once."""
    factories = [FakeServerFactory("a", rsv1=False), FakeServerFactory("a", rsv1=False)]
    header, extensions = negotiate_server(["a"], factories)
    assert header == "a"
    assert len(extensions) == 1


@pytest.mark.parametrize("value", ["x-fake;", "x-fake; a=", '"x"', "x y"])
def test_negotiate_server_malformed_header(value: str) -> None:
    """A malformed client header raises HandshakeError 400 naming the header."""
    with pytest.raises(HandshakeError) as info:
        negotiate_server([value], [FakeServerFactory()])
    assert info.value.status == 400
    assert "Sec-WebSocket-Extensions" in str(info.value)


# Client side


def test_build_client_offer() -> None:
    """The offer lists each factory with its params; no factory gives None."""
    factories = [FakeClientFactory(), FakeClientFactory("y", [("a", None)])]
    assert build_client_offer(factories) == "x-fake; level=1, y; a"
    assert build_client_offer([]) is None


def test_negotiate_client_empty_response() -> None:
    """A response without extensions negotiates nothing."""
    assert negotiate_client([], [FakeClientFactory()]) == []


def test_negotiate_client_accepts() -> None:
    """Each answered extension is built by its factory, in response order."""
    factories = [FakeClientFactory("a"), FakeClientFactory("b", rsv1=False)]
    extensions = negotiate_client(["b; q=1", "a"], factories)
    assert extensions == [FakeExtension("b", [("q", "1")]), FakeExtension("a", [], rsv1=True)]


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        (["y"], "not offered"),
        (["x-fake, x-fake"], "more than once"),
        (["x-fake; bad"], "unacceptable"),
        (["x-fake;;"], "Sec-WebSocket-Extensions"),
    ],
)
def test_negotiate_client_failures(values: list[str], fragment: str) -> None:
    """Unoffered, repeated, refused or malformed answers raise HandshakeError 502."""
    with pytest.raises(HandshakeError) as info:
        negotiate_client(values, [FakeClientFactory()])
    assert info.value.status == 502
    assert fragment in str(info.value)


def test_negotiate_client_rsv_conflict() -> None:
    """Two answered extensions claiming one RSV bit raise HandshakeError 502."""
    with pytest.raises(HandshakeError) as info:
        negotiate_client(["a, b"], [FakeClientFactory("a"), FakeClientFactory("b")])
    assert info.value.status == 502
    assert "RSV" in str(info.value)


def test_full_negotiation() -> None:
    """Client offer -> server negotiation -> client check agree on the extension."""
    offer = build_client_offer([FakeClientFactory(params=[("level", "9")])])
    assert offer is not None
    header, server_side = negotiate_server([offer], [FakeServerFactory()])
    assert header is not None
    client_side = negotiate_client([header], [FakeClientFactory()])
    assert client_side == server_side == [FakeExtension("x-fake", [("level", "9")], rsv1=True)]
