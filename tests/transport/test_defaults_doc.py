"""docs/defaults.md lists every transport and App option with the default the code uses."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from tidewire.realtime.options import AppOptions
from tidewire.transport.options import Options

DOC = Path(__file__).resolve().parents[2] / "docs" / "defaults.md"
ROW = re.compile(r"^\| `(\w+)` \| `([^`]*)` \| (.+) \|$")


def documented(section: int = 0) -> dict[str, str]:
    """Option name -> default as written in the transport table (0) or the App table (1)."""
    text = DOC.read_text().split("## Real-time App")[section]
    rows = {}
    for line in text.splitlines():
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


def test_every_app_option_is_documented_with_its_default() -> None:
    """Each AppOptions field has a row in the App table with the code's default."""
    rows = documented(1)
    for field in fields(AppOptions):
        assert rows.get(field.name) == repr(field.default), field.name
    assert set(rows) == {field.name for field in fields(AppOptions)}
