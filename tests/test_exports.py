"""The public API: tidewire.__all__ and each subpackage's __all__ are pinned and importable."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import tidewire

PUBLIC = {
    "serve",
    "connect",
    "WebSocket",
    "App",
    "Session",
    "Client",
    "CloseCode",
    "TidewireError",
    "ConnectionClosed",
}


def test_top_level_names_are_pinned() -> None:
    """tidewire.__all__ is exactly the documented public API (DESIGN.md)."""
    assert set(tidewire.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(tidewire, name) is not None


@pytest.mark.parametrize(
    "package",
    ["tidewire.protocol", "tidewire.transport", "tidewire.realtime", "tidewire.realtime.brokers"],
)
def test_subpackage_exports_resolve(package: str) -> None:
    """Every name a subpackage lists in __all__ exists, and __all__ has no duplicates."""
    module = importlib.import_module(package)
    names = list(module.__all__)
    assert len(names) == len(set(names))
    for name in names:
        assert hasattr(module, name), f"{package}.{name}"


def test_importing_the_protocol_core_does_not_pull_in_asyncio() -> None:
    """`import tidewire.protocol` stays sans-I/O: asyncio is not imported."""
    code = "import sys, tidewire.protocol; print('asyncio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
