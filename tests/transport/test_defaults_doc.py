"""docs/defaults.md lists every transport option with the default the code uses."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from tidewire.transport.options import Options

DOC = Path(__file__).resolve().parents[2] / "docs" / "defaults.md"
ROW = re.compile(r"^\| `(\w+)` \| `([^`]*)` \| (.+) \|$")


def documented() -> dict[str, str]:
    """Option name -> default as written in the table."""
    rows = {}
    for line in DOC.read_text().splitlines():
        match = ROW.match(line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


def test_every_option_is_documented_with_its_default() -> None:
    """Each Options field has a row whose default equals repr() of the code's default."""
    rows = documented()
    for field in fields(Options):
        assert field.name in rows, f"{field.name} missing from docs/defaults.md"
        assert rows[field.name] == repr(field.default), field.name


def test_no_stale_rows() -> None:
    """Every documented option still exists in the code."""
    names = {field.name for field in fields(Options)}
    assert set(documented()) <= names
