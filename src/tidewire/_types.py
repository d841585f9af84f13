"""Shared type aliases."""

from __future__ import annotations

from typing import TypeAlias

__all__ = ["BytesLike", "Data"]

BytesLike: TypeAlias = bytes | bytearray | memoryview
Data: TypeAlias = str | bytes
