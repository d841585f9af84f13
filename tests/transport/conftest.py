"""Fixtures for the transport tests: a watchdog so no test can hang the run."""

from __future__ import annotations

import faulthandler
from collections.abc import Iterator

import pytest

#: Hard ceiling per test: even a test whose event loop is starved cannot hang the run.
WATCHDOG_SECONDS = 30


@pytest.fixture(autouse=True)
def _watchdog() -> Iterator[None]:
    """Kill the run with a traceback if one test runs past WATCHDOG_SECONDS."""
    faulthandler.dump_traceback_later(WATCHDOG_SECONDS, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
