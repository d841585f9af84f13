"""Run kosoku (the Autobahn TestSuite cases) as a subprocess and judge its reports.

kosoku writes Autobahn-format reports into its output directory once a run ends:

* ``index.json``: ``{agent: {case_id: {"behavior", "behaviorClose", "duration",
  "remoteCloseCode", "reportfile"}}}``, where ``agent`` is the peer's ``Server`` header
  (fuzzingclient mode) or the ``agent`` query parameter it sent (fuzzingserver mode) and
  ``duration`` is in milliseconds;
* one ``<agent>_case_<id>.json`` per case (``reportfile``) with the description, the
  expectation, the events received, and why the verdict was given (``result``,
  ``resultClose``), plus an HTML twin of each and an ``index.html``.

kosoku exits 1 when any case fails and still writes the reports; the verdicts are judged here,
so a tidewire test decides which failures matter (and prints why).

Usage, fuzzingclient (kosoku drives our server)::

    results = run_fuzzingclient("127.0.0.1:9001", tmp_path, include=["1.*"], timeout=60)
    assert not failures(results), failure_details(results, tmp_path)

fuzzingserver (kosoku is the server our client connects to)::

    with start_fuzzingserver("127.0.0.1:0", tmp_path) as server:
        ...  # drive server.url + "/getCaseCount", "/runCase?case=N&agent=A", "/updateReports"
        server.wait(timeout=60)
    results = read_fuzzingserver_report(tmp_path, "A")
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "ACCEPTED_BEHAVIOR",
    "ACCEPTED_BEHAVIOR_CLOSE",
    "CaseResults",
    "FuzzingServer",
    "KosokuError",
    "case_details",
    "failure_details",
    "failures",
    "kosoku_command",
    "non_strict",
    "read_fuzzingserver_report",
    "read_report",
    "run_fuzzingclient",
    "cases_under",
    "start_fuzzingserver",
    "sum_durations",
    "summarize",
]

# Autobahn's verdicts: NON-STRICT misses a SHOULD and INFORMATIONAL probes behavior the RFC
# leaves open; both are conformant. Anything else (FAILED, UNIMPLEMENTED, ERROR, WRONG CODE,
# UNCLEAN, FAILED BY CLIENT, missing) is not.
ACCEPTED_BEHAVIOR = frozenset({"OK", "NON-STRICT", "INFORMATIONAL"})
ACCEPTED_BEHAVIOR_CLOSE = frozenset({"OK", "INFORMATIONAL"})

CaseResults = dict[str, dict[str, Any]]
"""Case id (``"9.1.6"``) -> that case's ``index.json`` entry."""

INDEX = "index.json"
SERVER_LOG = "kosoku-fuzzingserver.log"


class KosokuError(RuntimeError):
    """kosoku could not produce a report: it crashed, timed out or was misused."""


def kosoku_command() -> list[str]:
    """The kosoku console script: the one beside this interpreter, else the one on PATH."""
    beside = Path(sys.executable).with_name("kosoku")
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("kosoku")
    if found is None:
        raise KosokuError("kosoku is not installed (pip install -e '.[dev]')")
    return [found]


def _case_key(case_id: str) -> tuple[int, ...]:
    """Numeric order, so 1.2.10 sorts after 1.2.9 and 12.1.1 after 9.8.1."""
    return tuple(int(part) for part in case_id.split(".") if part.isdigit())


def _selection(include: Sequence[str] | None, exclude: Sequence[str] | None) -> list[str]:
    args: list[str] = []
    for case in include or ():
        args += ["-i", case]
    for case in exclude or ():
        args += ["-x", case]
    return args


def _fresh_outdir(outdir: Path) -> None:
    """Create ``outdir`` and drop a stale index, so an old run is never judged as this one."""
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / INDEX).unlink(missing_ok=True)


def read_report(outdir: Path, agent: str | None = None) -> CaseResults:
    """The per-case results for ``agent`` in ``outdir/index.json``, in case order.

    With ``agent=None`` the cases of every agent in the index are merged.
    """
    index_path = outdir / INDEX
    if not index_path.is_file():
        raise KosokuError(f"no report at {index_path}")
    index: dict[str, CaseResults] = json.loads(index_path.read_text(encoding="utf-8"))
    if agent is None:
        # A case whose connection failed before the Server header arrived is filed
        # under the peer's address instead of its agent name: merge them all.
        if not index:
            raise KosokuError(f"no agent in {index_path}")
        cases = {}
        for agent_cases in index.values():
            cases.update(agent_cases)
    elif agent in index:
        cases = index[agent]
    else:
        raise KosokuError(f"agent {agent!r} not in {index_path}; agents: {sorted(index)}")
    return {case_id: cases[case_id] for case_id in sorted(cases, key=_case_key)}


def run_fuzzingclient(
    url_host_port: str,
    outdir: Path,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    parallelism: int = 1,
    timeout: float,
) -> CaseResults:
    """Run ``kosoku -m fuzzingclient`` against a server under test and return its results.

    ``url_host_port`` is ``host:port`` or ``ws://host:port``; ``include``/``exclude`` take
    case ids or ``*`` globs (``"9.*"``). Raises :class:`KosokuError` if kosoku times out or
    exits without writing a report; failed cases are not an error here (see :func:`failures`).
    """
    _fresh_outdir(outdir)
    cmd = [
        *kosoku_command(),
        "-m",
        "fuzzingclient",
        url_host_port,
        "-o",
        str(outdir),
        "-p",
        str(parallelism),
        *_selection(include, exclude),
    ]
    try:
        proc = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise KosokuError(
            f"kosoku fuzzingclient did not finish within {timeout} s: {' '.join(cmd)}"
        ) from exc
    if proc.returncode not in (0, 1) or not (outdir / INDEX).is_file():
        raise KosokuError(
            f"kosoku fuzzingclient exited {proc.returncode} without a report\n"
            f"command: {' '.join(cmd)}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return read_report(outdir)


class FuzzingServer:
    """A running ``kosoku -m fuzzingserver`` process; made by :func:`start_fuzzingserver`."""

    def __init__(self, process: subprocess.Popen[bytes], host: str, port: int, outdir: Path):
        self.process = process
        self.host = host
        self.port = port
        self.outdir = outdir

    @property
    def url(self) -> str:
        """``ws://host:port``, the base for /getCaseCount, /runCase and /updateReports."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}"

    @property
    def log(self) -> str:
        """What kosoku printed so far (stdout and stderr)."""
        return (self.outdir / SERVER_LOG).read_text(encoding="utf-8", errors="replace")

    def wait(self, timeout: float) -> int:
        """Wait for kosoku to write its report and exit, once the client ran every case.

        Returns the exit status: 0 if every case passed, 1 if any failed. Raises
        :class:`KosokuError` on a timeout or a crash.
        """
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise KosokuError(
                f"kosoku fuzzingserver still running after {timeout} s\n{self.log}"
            ) from exc
        if code not in (0, 1):
            raise KosokuError(f"kosoku fuzzingserver exited {code}\n{self.log}")
        return code

    def stop(self) -> None:
        """Terminate kosoku if it is still running (SIGTERM, then SIGKILL after 5 s)."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


_LISTENING = re.compile(r"listening on ws://\[?(?P<host>[^\]\s]+?)\]?:(?P<port>\d+)")


def _split_host_port(host_port: str) -> tuple[str, int]:
    host, sep, port = host_port.removeprefix("ws://").rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected host:port, got {host_port!r}")
    return host.strip("[]"), int(port)


def _accepts_connections(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def start_fuzzingserver(
    host_port: str,
    outdir: Path,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    startup_timeout: float = 30.0,
) -> Iterator[FuzzingServer]:
    """Run ``kosoku -m fuzzingserver host:port -o outdir`` for the duration of the block.

    Yields once the port accepts connections. Port 0 asks the OS for a free port; the real one
    is on the yielded :class:`FuzzingServer`. kosoku's output goes to
    ``outdir/kosoku-fuzzingserver.log``. On exit the process is terminated if still running;
    call :meth:`FuzzingServer.wait` inside the block to let it finish writing the report.
    """
    host, port = _split_host_port(host_port)
    _fresh_outdir(outdir)
    log_path = outdir / SERVER_LOG
    cmd = [
        *kosoku_command(),
        "-m",
        "fuzzingserver",
        f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "-o",
        str(outdir),
        *_selection(include, exclude),
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    server = FuzzingServer(process, host, port, outdir)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                raise KosokuError(f"kosoku fuzzingserver exited {process.returncode}\n{server.log}")
            match = _LISTENING.search(server.log)
            if match and _accepts_connections(host, int(match["port"])):
                server.port = int(match["port"])
                break
            if time.monotonic() > deadline:
                raise KosokuError(f"kosoku fuzzingserver not listening after {startup_timeout} s")
            time.sleep(0.05)
        yield server
    finally:
        server.stop()


def read_fuzzingserver_report(outdir: Path, agent: str) -> CaseResults:
    """The results a fuzzingserver run wrote for the client that called itself ``agent``."""
    return read_report(outdir, agent)


def cases_under(results: Mapping[str, Mapping[str, Any]], prefix: str) -> list[str]:
    """Case ids equal to ``prefix`` or under it: ``"9"`` or ``"9."`` gives 9.*, not 10.*."""
    stem = prefix.rstrip(".")
    return [c for c in results if c == stem or c.startswith(stem + ".")]


def failures(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Case ids whose behavior or behaviorClose is not an accepted verdict, in case order."""
    return sorted(
        (
            case_id
            for case_id, r in results.items()
            if r.get("behavior") not in ACCEPTED_BEHAVIOR
            or r.get("behaviorClose") not in ACCEPTED_BEHAVIOR_CLOSE
        ),
        key=_case_key,
    )


def non_strict(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Case ids that passed only non-strictly (a SHOULD of RFC 6455 missed), in case order."""
    return sorted(
        (case_id for case_id, r in results.items() if r.get("behavior") == "NON-STRICT"),
        key=_case_key,
    )


def _counts(values: Iterable[Any]) -> str:
    return ", ".join(f"{k}={n}" for k, n in sorted(Counter(map(str, values)).items()))


def summarize(results: Mapping[str, Mapping[str, Any]]) -> str:
    """One line: the case count, then the count of each behavior and behaviorClose verdict."""
    return (
        f"{len(results)} cases; behavior: {_counts(r.get('behavior') for r in results.values())}"
        f"; behaviorClose: {_counts(r.get('behaviorClose') for r in results.values())}"
    )


def sum_durations(results: Mapping[str, Mapping[str, Any]], prefix: str) -> int:
    """Total ``duration`` (ms) of the cases under ``prefix`` (``"9."``, ``"12."``)."""
    return sum(int(results[c].get("duration") or 0) for c in cases_under(results, prefix))


def case_details(outdir: Path, results: Mapping[str, Mapping[str, Any]], case_id: str) -> str:
    """Why a case got its verdict, from its per-case report file: for assertion messages."""
    entry = results[case_id]
    head = f"{case_id}: behavior={entry.get('behavior')} close={entry.get('behaviorClose')}"
    report = outdir / str(entry.get("reportfile", ""))
    if not entry.get("reportfile") or not report.is_file():
        return head
    case = json.loads(report.read_text(encoding="utf-8"))
    return (
        f"{head} remoteCloseCode={case.get('remoteCloseCode')}\n"
        f"    description: {case.get('description')}\n"
        f"    expectation: {case.get('expectation')}\n"
        f"    result: {case.get('result')}\n"
        f"    resultClose: {case.get('resultClose')}"
    )


def failure_details(
    results: Mapping[str, Mapping[str, Any]], outdir: Path, *, limit: int = 20
) -> str:
    """A summary plus the details of the first ``limit`` failures, for ``assert`` messages."""
    failed = failures(results)
    lines = [summarize(results), f"{len(failed)} failed: {' '.join(failed)}"]
    lines += [case_details(outdir, results, case_id) for case_id in failed[:limit]]
    lines.append(f"reports: {outdir / 'index.html'}")
    return "\n".join(lines)
