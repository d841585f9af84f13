"""The one place that chooses between the C accelerator and its pure-Python twin.

``_speedups`` (C) is used when it was built and imports; otherwise ``_purepy``.  Setting
the environment variable ``TIDEWIRE_NO_SPEEDUPS`` to anything but ``""`` or ``"0"``
forces the pure-Python path (the C module is then not even imported).

Exports ``apply_mask``, ``utf8_check``, ``utf8_valid``, ``HAS_SPEEDUPS`` (True when the
exported functions are the C ones) and ``IMPLEMENTATIONS`` (``"python"`` and, when
loaded, ``"c"``) so tests can exercise every implementation.
"""

from __future__ import annotations

import os
from types import ModuleType

from tidewire.protocol import _purepy

__all__ = [
    "HAS_SPEEDUPS",
    "IMPLEMENTATIONS",
    "Assembler",
    "apply_mask",
    "parse_frames",
    "unmask_into",
    "utf8_check",
    "utf8_valid",
]

IMPLEMENTATIONS: dict[str, ModuleType] = {"python": _purepy}

if os.environ.get("TIDEWIRE_NO_SPEEDUPS", "") in ("", "0"):
    try:
        from tidewire.protocol import _speedups
    except ImportError:
        pass
    else:
        IMPLEMENTATIONS["c"] = _speedups

HAS_SPEEDUPS: bool = "c" in IMPLEMENTATIONS

if HAS_SPEEDUPS:
    from tidewire.protocol._speedups import (
        Assembler,
        apply_mask,
        parse_frames,
        unmask_into,
        utf8_check,
        utf8_valid,
    )
else:
    from tidewire.protocol._purepy import (  # type: ignore[assignment]
        Assembler,
        apply_mask,
        parse_frames,
        unmask_into,
        utf8_check,
        utf8_valid,
    )
