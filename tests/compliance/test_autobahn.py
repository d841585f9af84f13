"""Autobahn TestSuite conformance (kosoku), every case, both roles.

Server role: kosoku's fuzzingclient drives ``tidewire echo``.  Client role:
``tests/compliance/client.py`` drives kosoku's fuzzingserver.  Each case must
be OK or INFORMATIONAL (strict: NON-STRICT counts as a failure here), and the
close behaviour OK or INFORMATIONAL.  The reports are copied to
``artifacts/autobahn/`` for reading.  Together these take about 13 minutes on
two cores; skip them locally with ``-m "not slow"``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .kosoku_harness import (
    CaseResults,
    failure_details,
    failures,
    non_strict,
    read_fuzzingserver_report,
    run_fuzzingclient,
    start_fuzzingserver,
    sum_durations,
    summarize,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "autobahn"
TOTAL_CASES = 517


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def echo_server() -> Iterator[str]:
    """``tidewire echo`` in a subprocess; yields host:port."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tidewire", "echo", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        else:
            pytest.fail("tidewire echo did not start within 30 s")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, "tidewire echo did not stop cleanly on SIGTERM"


def keep_report(outdir: Path, name: str) -> None:
    """Copy a kosoku report directory to artifacts/ for humans to read."""
    target = ARTIFACTS / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(outdir, target)


def check(results: CaseResults, outdir: Path) -> None:
    """Every case ran, none failed, none is NON-STRICT."""
    print(summarize(results))
    print(
        f"9.x: {sum_durations(results, '9')} ms; 12.x: {sum_durations(results, '12')} ms; "
        f"13.x: {sum_durations(results, '13')} ms"
    )
    assert len(results) == TOTAL_CASES, f"{len(results)} cases reported"
    assert not failures(results), failure_details(results, outdir)
    assert not non_strict(results), f"NON-STRICT: {non_strict(results)}"


def test_server_role_all_cases(echo_server: str, tmp_path: Path) -> None:
    """kosoku fuzzingclient against tidewire echo: all 517 cases strictly OK."""
    outdir = tmp_path / "servers"
    results = run_fuzzingclient(echo_server, outdir, timeout=1800)
    keep_report(outdir, "server")
    check(results, outdir)


def test_client_role_all_cases(tmp_path: Path) -> None:
    """tests/compliance/client.py against kosoku fuzzingserver: all 517 cases strictly OK."""
    outdir = tmp_path / "clients"
    with start_fuzzingserver("127.0.0.1:0", outdir) as server:
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "tests" / "compliance" / "client.py"),
                server.url,
                "--agent",
                "tidewire",
            ],
            check=True,
            timeout=1800,
        )
        server.wait(timeout=60)
    results = read_fuzzingserver_report(outdir, "tidewire")
    keep_report(outdir, "client")
    check(results, outdir)
