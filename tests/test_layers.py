"""Imports point down the layers, and the protocol core stays sans-I/O.

Layers, bottom to top (docs: /DESIGN.md, "Layers")::

    0  tidewire.errors, tidewire._types   stdlib only
    1  tidewire.protocol.*                stdlib (no I/O), errors, _types
    2  tidewire.transport.*               protocol, errors, _types
    3  tidewire.realtime.*                tidewire.transport (package names only), protocol,
                                          errors, _types
    4  tidewire.apps.*                    the public packages of every layer below

``tidewire/__init__.py``, ``tidewire/__main__.py`` and ``tidewire/testing.py`` are top-level
glue and exempt. Every other module must belong to a layer, so a new top-level module is a
decision someone makes here, not an accident.

Modules are parsed with :mod:`ast`, never imported: the check sees imports under
``if TYPE_CHECKING:``, inside functions and in ``try`` blocks, and it runs even when a module
would fail to import.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "tidewire"
SRC = Path(__file__).resolve().parents[1] / "src"

EXEMPT = frozenset({"tidewire", "tidewire.__main__", "tidewire.testing"})

# What apps see: the public API and the subpackages' exported names (plus any public
# sub-subpackage, e.g. tidewire.realtime.brokers), never the modules behind them.
PUBLIC_FOR_APPS = frozenset(
    {"tidewire", "tidewire.errors", "tidewire.protocol", "tidewire.transport", "tidewire.realtime"}
)

# The sans-I/O core takes bytes and time as arguments (RFC 6455 rules must not depend on a
# driver), so nothing that does I/O, runs an event loop or starts threads may be imported there.
FORBIDDEN_IN_PROTOCOL = frozenset(
    {
        "asyncio",
        "concurrent",
        "http.client",
        "http.server",
        "multiprocessing",
        "select",
        "selectors",
        "socket",
        "socketserver",
        "ssl",
        "subprocess",
        "threading",
        "urllib.request",
        "uvloop",
    }
)


@dataclass(frozen=True, slots=True)
class Import:
    """One imported module name, where it was imported, and how it was written."""

    target: str
    lineno: int
    text: str


@dataclass(frozen=True, slots=True)
class Violation:
    """An import that breaks the layering, with the reason."""

    module: str
    lineno: int
    text: str
    reason: str
    sans_io: bool = False

    def __str__(self) -> str:
        return f"{self.module}:{self.lineno}: `{self.text}` -- {self.reason}"


def _within(name: str, prefix: str) -> bool:
    """Whether ``name`` is the module ``prefix`` or one of its submodules."""
    return name == prefix or name.startswith(prefix + ".")


def layer_of(module: str) -> str | None:
    """The layer a tidewire module belongs to, or None if it is in no layer."""
    if module in ("tidewire.errors", "tidewire._types"):
        return "base"
    for layer in ("protocol", "transport", "realtime", "apps"):
        if _within(module, f"{PACKAGE}.{layer}"):
            return layer
    return None


def _is_public_package(name: str, packages: frozenset[str]) -> bool:
    return name in packages and not any(part.startswith("_") for part in name.split("."))


def allowed(importer_layer: str, target: str, packages: frozenset[str]) -> bool:
    """Whether a module in ``importer_layer`` may import the tidewire module ``target``."""
    base = target in ("tidewire.errors", "tidewire._types")
    if importer_layer == "base":
        return False
    if importer_layer == "protocol":
        return base or _within(target, "tidewire.protocol")
    if importer_layer == "transport":
        return base or _within(target, "tidewire.protocol") or _within(target, "tidewire.transport")
    if importer_layer == "realtime":
        return (
            base
            or _within(target, "tidewire.protocol")
            or target == "tidewire.transport"
            or _within(target, "tidewire.realtime")
        )
    if importer_layer == "apps":
        public_below = target in PUBLIC_FOR_APPS or (
            layer_of(target) in ("protocol", "transport", "realtime")
            and _is_public_package(target, packages)
        )
        return public_below or _within(target, "tidewire.apps")
    raise AssertionError(f"unknown layer {importer_layer!r}")


def _resolve_relative(module: str, is_package: bool, level: int, name: str | None) -> str:
    """Absolute name of ``from <level dots><name> import ...`` written in ``module``."""
    parts = module.split(".")
    package = parts if is_package else parts[:-1]
    if level - 1 > len(package) - 1:
        raise ValueError(f"relative import beyond top-level package in {module}")
    anchor = package[: len(package) - (level - 1)]
    return ".".join(anchor + ([name] if name else []))


def iter_imports(
    module: str, source: str, *, is_package: bool, known: frozenset[str]
) -> Iterator[Import]:
    """Yield every module the source imports, relative imports resolved.

    ``from pkg import name`` yields ``pkg``, and also ``pkg.name`` when that is a known module,
    since that form imports the submodule. String imports through ``importlib.import_module``
    and ``__import__`` with a literal name count too.
    """
    tree = ast.parse(source, filename=module)
    lines = source.splitlines()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom | ast.Call):
            continue
        text = lines[node.lineno - 1].strip() if node.lineno <= len(lines) else ""
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, node.lineno, text)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _resolve_relative(module, is_package, node.level, node.module)
            else:
                base = node.module or ""
            if base:
                yield Import(base, node.lineno, text)
            for alias in node.names:
                candidate = f"{base}.{alias.name}" if base else alias.name
                if candidate in known:
                    yield Import(candidate, node.lineno, text)
        elif isinstance(node, ast.Call):
            func = node.func
            fname = (
                func.attr
                if isinstance(func, ast.Attribute)
                else func.id
                if isinstance(func, ast.Name)
                else None
            )
            if (
                fname in ("import_module", "__import__")
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
                and not node.args[0].value.startswith(".")
            ):
                yield Import(node.args[0].value, node.lineno, text)


def check_source(
    module: str,
    source: str,
    *,
    is_package: bool = False,
    known: frozenset[str] = frozenset(),
    packages: frozenset[str] = frozenset(),
) -> list[Violation]:
    """Every layering violation in one module's source.

    ``known`` holds every tidewire module name, ``packages`` those that are packages
    (``__init__.py``); both decide what ``from pkg import name`` refers to.
    """
    if module in EXEMPT:
        return []
    layer = layer_of(module)
    if layer is None:
        return [Violation(module, 0, "", "module belongs to no layer; add it in test_layers.py")]
    found: list[Violation] = []
    for imp in iter_imports(module, source, is_package=is_package, known=known):
        top = imp.target.partition(".")[0]
        if top == PACKAGE:
            if not allowed(layer, imp.target, packages):
                found.append(
                    Violation(
                        module,
                        imp.lineno,
                        imp.text,
                        f"layer {layer!r} may not import {imp.target}",
                    )
                )
        elif layer in ("base", "protocol"):
            if top not in sys.stdlib_module_names:
                found.append(
                    Violation(
                        module,
                        imp.lineno,
                        imp.text,
                        f"layer {layer!r} may import only the standard library, not {top}",
                    )
                )
            elif layer == "protocol" and any(
                _within(imp.target, bad) for bad in FORBIDDEN_IN_PROTOCOL
            ):
                found.append(
                    Violation(
                        module,
                        imp.lineno,
                        imp.text,
                        f"the protocol core is sans-I/O: no {imp.target}",
                        sans_io=True,
                    )
                )
    return found


@dataclass(frozen=True, slots=True)
class SourceModule:
    """A module file found under src/tidewire."""

    name: str
    path: Path
    is_package: bool


def discover(src: Path = SRC) -> list[SourceModule]:
    """Every Python module of the tidewire package under ``src``."""
    found = []
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        found.append(SourceModule(".".join(parts), path, is_package))
    return found


def _known_names(src: Path = SRC) -> frozenset[str]:
    """Module names, counting extension stubs (``_speedups.pyi``) too."""
    names = {m.name for m in discover(src)}
    for stub in (src / PACKAGE).rglob("*.pyi"):
        names.add(".".join(stub.relative_to(src).with_suffix("").parts))
    return frozenset(names)


def check_tree(src: Path = SRC) -> list[Violation]:
    """Every layering violation in the package under ``src``."""
    modules = discover(src)
    known = _known_names(src)
    packages = frozenset(m.name for m in modules if m.is_package)
    found: list[Violation] = []
    for m in modules:
        found += check_source(
            m.name,
            m.path.read_text(encoding="utf-8"),
            is_package=m.is_package,
            known=known,
            packages=packages,
        )
    return found


def _report(violations: list[Violation]) -> str:
    return "imports that point up the layers:\n" + "\n".join(f"  {v}" for v in violations)


def test_discovers_the_package() -> None:
    """The checker finds tidewire's modules, so an empty scan cannot pass silently."""
    names = {m.name for m in discover()}
    assert {"tidewire.errors", "tidewire.protocol"} <= names


def test_imports_point_down() -> None:
    """No module under src/tidewire imports from a layer above its own."""
    violations = [v for v in check_tree() if not v.sans_io]
    assert not violations, _report(violations)


def test_protocol_is_sans_io() -> None:
    """No module of tidewire.protocol imports asyncio, socket, ssl, selectors or threading."""
    violations = [v for v in check_tree() if v.sans_io]
    assert not violations, _report(violations)


_KNOWN = frozenset(
    {
        "tidewire",
        "tidewire.errors",
        "tidewire._types",
        "tidewire.protocol",
        "tidewire.protocol.close",
        "tidewire.protocol._accel",
        "tidewire.transport",
        "tidewire.transport.connection",
        "tidewire.realtime",
        "tidewire.realtime.brokers",
        "tidewire.realtime.brokers.redis",
        "tidewire.realtime.hub",
        "tidewire.apps",
        "tidewire.apps.cli",
        "tidewire.apps.cli.serve",
    }
)
_PACKAGES = frozenset(
    {
        "tidewire",
        "tidewire.protocol",
        "tidewire.transport",
        "tidewire.realtime",
        "tidewire.realtime.brokers",
        "tidewire.apps",
        "tidewire.apps.cli",
    }
)

BAD = [
    ("tidewire.protocol.close", "import tidewire.transport"),
    ("tidewire.protocol.close", "from tidewire.transport import WebSocket"),
    ("tidewire.protocol.close", "from ..transport import connection"),
    ("tidewire.protocol.close", "from tidewire import CloseCode"),
    ("tidewire.protocol.close", "import asyncio"),
    ("tidewire.protocol.close", "from asyncio import Protocol"),
    ("tidewire.protocol.close", "import concurrent.futures"),
    ("tidewire.protocol.close", "def f():\n    import socket"),
    ("tidewire.protocol.close", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n import ssl"),
    ("tidewire.protocol.close", "import importlib\nimportlib.import_module('selectors')"),
    ("tidewire.protocol.close", "import numpy"),
    ("tidewire.protocol", "from ..transport import connection"),
    ("tidewire.errors", "from tidewire.protocol import CloseCode"),
    ("tidewire._types", "from . import errors"),
    ("tidewire.errors", "import attrs"),
    ("tidewire.transport.connection", "from tidewire.realtime import App"),
    ("tidewire.transport.connection", "from tidewire import serve"),
    ("tidewire.realtime.hub", "import tidewire.transport.connection"),
    ("tidewire.realtime.hub", "from tidewire.transport.connection import WebSocket"),
    ("tidewire.realtime.hub", "from tidewire.transport import connection"),
    ("tidewire.realtime.hub", "from ..transport import connection"),
    ("tidewire.realtime.hub", "from tidewire.apps.cli import serve"),
    ("tidewire.realtime.brokers.redis", "from ...transport.connection import WebSocket"),
    ("tidewire.apps.cli.serve", "from tidewire.transport.connection import WebSocket"),
    ("tidewire.apps.cli.serve", "from tidewire.protocol._accel import apply_mask"),
    ("tidewire.apps.cli.serve", "from tidewire.realtime.hub import Hub"),
    ("tidewire.apps.cli.serve", "from tidewire.realtime.brokers import redis"),
    ("tidewire.somewhere", "import json"),
]

GOOD = [
    ("tidewire.errors", "from __future__ import annotations\nfrom typing import Any"),
    ("tidewire.protocol.close", "import enum, struct, os, http\nfrom tidewire.errors import X"),
    ("tidewire.protocol.close", "from . import _accel\nfrom .._types import BytesLike"),
    ("tidewire.protocol", "from .close import CloseCode\nfrom tidewire.protocol import close"),
    ("tidewire.transport.connection", "import asyncio, ssl\nfrom ..protocol import Connection"),
    ("tidewire.transport.connection", "import tidewire.protocol.close\nimport uvloop"),
    ("tidewire.realtime.hub", "from tidewire.transport import WebSocket, serve"),
    ("tidewire.realtime.hub", "from ..transport import WebSocket\nfrom .brokers import redis"),
    ("tidewire.realtime.hub", "from tidewire.protocol.close import CloseCode"),
    ("tidewire.realtime.brokers.redis", "from ...transport import WebSocket\nimport redis"),
    ("tidewire.apps.cli.serve", "from tidewire import App, serve\nfrom tidewire.errors import X"),
    ("tidewire.apps.cli.serve", "from tidewire.realtime.brokers import RedisBroker"),
    ("tidewire.apps.cli.serve", "from tidewire.transport import WebSocket\nfrom . import main"),
    ("tidewire", "from tidewire.transport.connection import WebSocket"),
    ("tidewire.testing", "from tidewire.realtime.hub import Hub\nimport asyncio"),
    ("tidewire.__main__", "from tidewire.apps.cli.main import main"),
]


def _check(module: str, source: str) -> list[Violation]:
    return check_source(
        module, source, is_package=module in _PACKAGES, known=_KNOWN, packages=_PACKAGES
    )


@pytest.mark.parametrize(("module", "source"), BAD)
def test_checker_reports_bad_import(module: str, source: str) -> None:
    """The checker flags a synthetic module whose import points up or does I/O in protocol."""
    assert _check(module, source)


@pytest.mark.parametrize(("module", "source"), GOOD)
def test_checker_accepts_good_import(module: str, source: str) -> None:
    """The checker accepts imports that point down, so it does not fail everything."""
    assert _check(module, source) == []


def test_checker_reports_line_and_target() -> None:
    """A violation names the module, the line and the forbidden target."""
    (v,) = _check(
        "tidewire.realtime.hub", "import json\n\nfrom tidewire.transport import connection"
    )
    assert (v.module, v.lineno) == ("tidewire.realtime.hub", 3)
    assert "tidewire.transport.connection" in v.reason


def test_relative_import_beyond_package_is_an_error() -> None:
    """A relative import climbing past the top-level package is rejected, not ignored."""
    with pytest.raises(ValueError, match="beyond top-level"):
        _check("tidewire.errors", "from ... import x")


def test_check_tree_finds_violation_on_disk(tmp_path: Path) -> None:
    """check_tree walks a package on disk and reports an upward import it finds there."""
    pkg = tmp_path / PACKAGE
    (pkg / "protocol").mkdir(parents=True)
    (pkg / "transport").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("")
    (pkg / "protocol" / "__init__.py").write_text("from . import frames\n")
    (pkg / "protocol" / "frames.py").write_text("import asyncio\nfrom ..transport import conn\n")
    (pkg / "transport" / "__init__.py").write_text("")
    (pkg / "transport" / "conn.py").write_text("from tidewire.protocol import frames\n")
    found = sorted(str(v) for v in check_tree(tmp_path))
    assert len(found) == 3, found
    assert found[0].startswith("tidewire.protocol.frames:1:") and "sans-I/O" in found[0]
    assert found[1].endswith("may not import tidewire.transport")
    assert found[2].endswith("may not import tidewire.transport.conn")
