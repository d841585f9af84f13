"""Options (transport/options.py): every field documented with a default; unknown names rejected."""

from __future__ import annotations

import ast
import dataclasses
import inspect

import pytest

from tidewire.transport import DEFAULTS, Options, connect, serve
from tidewire.transport import options as options_module

from .peers import echo


def _field_nodes() -> tuple[list[str], list[ast.AnnAssign]]:
    source = inspect.getsource(options_module)
    tree = ast.parse(source)
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Options"]
    nodes = [n for n in cls.body if isinstance(n, ast.AnnAssign)]
    return source.splitlines(), nodes


def test_every_field_has_a_default_and_a_doc_comment() -> None:
    """Each Options field has a default value and a `#:` comment directly above it."""
    lines, nodes = _field_nodes()
    names = [n.target.id for n in nodes if isinstance(n.target, ast.Name)]
    assert names == [f.name for f in dataclasses.fields(Options)]
    for node in nodes:
        assert node.value is not None, f"{ast.unparse(node.target)} has no default"
        above = lines[node.lineno - 2].strip()
        assert above.startswith("#:") and len(above) > 3, f"{ast.unparse(node.target)}: {above!r}"
    for field in dataclasses.fields(Options):
        assert field.default is not dataclasses.MISSING or (
            field.default_factory is not dataclasses.MISSING
        )


def test_defaults_are_sane() -> None:
    """DEFAULTS is Options(); water marks are ordered; timeouts are positive."""
    assert DEFAULTS == Options()
    assert 0 < DEFAULTS.write_low_water < DEFAULTS.write_high_water
    for name in ("open_timeout", "close_timeout", "ping_interval", "ping_timeout"):
        value = getattr(DEFAULTS, name)
        assert value is None or value > 0, name


def test_options_are_keyword_only_and_frozen() -> None:
    """Options cannot be built positionally or changed in place."""
    with pytest.raises(TypeError):
        Options(1)  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULTS.max_queue = 1  # type: ignore[misc]
    assert DEFAULTS.with_(max_queue=3).max_queue == 3


def test_from_kwargs_pops_only_option_names() -> None:
    """from_kwargs takes the option names out of kwargs and leaves the rest."""
    kwargs = {"max_queue": 2, "origin": "x"}
    assert Options.from_kwargs(kwargs).max_queue == 2
    assert kwargs == {"origin": "x"}
    with pytest.raises(TypeError):
        DEFAULTS.with_(no_such_option=1)


def test_serve_rejects_unknown_option() -> None:
    """serve() raises TypeError naming an unknown keyword."""
    with pytest.raises(TypeError, match="max_queu"):
        serve(echo, max_queu=3)


async def test_connect_rejects_unknown_option() -> None:
    """connect() raises TypeError naming an unknown keyword, before opening any socket."""
    with pytest.raises(TypeError, match="ping_intervall"):
        await connect("ws://127.0.0.1:1/", ping_intervall=1)
