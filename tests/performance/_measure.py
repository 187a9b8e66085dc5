"""Shared helpers for the benchmark scripts: peak resident memory of a code section or of a process
tree, servers started and stopped around a measurement, tables with MILI/peer ratios.

Stdlib and psutil only: vLLM's peer venv imports this module too (its offline script measures itself
with `PeakTreeRss`).
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import psutil

SAMPLE_INTERVAL_S = 0.02


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (vLLM runs its engine in children)."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for process in processes:
        with suppress(psutil.Error):  # exited between listing and reading
            total += process.memory_info().rss
    return total


class PeakTreeRss:
    """Samples ``tree_rss(pid)`` every 20 ms on a thread from `start()` to `stop()`; ``peak`` is the
    largest sample."""

    def __init__(self, pid: int | None = None) -> None:
        self.pid = os.getpid() if pid is None else pid
        self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def start(self) -> PeakTreeRss:
        self.peak = tree_rss(self.pid)
        self._thread.start()
        return self

    def reset(self) -> None:
        """Start a new peak from the current figure (a new phase of the same process)."""
        self.peak = tree_rss(self.pid)

    def stop(self) -> int:
        """Stop sampling (once; later calls only return the peak)."""
        if self._thread.is_alive():
            self._done.set()
            self._thread.join()
            self.peak = max(self.peak, tree_rss(self.pid))
        return self.peak

    def _sample(self) -> None:
        while not self._done.wait(SAMPLE_INTERVAL_S):
            self.peak = max(self.peak, tree_rss(self.pid))


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else 0.0


@dataclass
class EngineRun:
    """One engine's offline run of a workload: seconds of the timed generate (after load and
    warm-up), output tokens, each request's time to first token from arrival (seconds), prompt tokens
    served from the prefix cache, and the peak RSS of the engine's process tree over the whole run."""

    seconds: float
    output_tokens: int
    ttfts: list[float]
    cached_tokens: int
    peak_rss: int

    @property
    def throughput(self) -> float:
        return self.output_tokens / self.seconds

    @property
    def mean_ttft(self) -> float | None:
        return mean(self.ttfts) if self.ttfts else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class ServerProcess:
    """A server started by `serving`: where it answers, and its process tree's peak memory so far."""

    base_url: str
    process: subprocess.Popen
    memory: PeakTreeRss = field(init=False)

    def __post_init__(self) -> None:
        self.memory = PeakTreeRss(self.process.pid)


class ServerFailed(RuntimeError):
    """A benchmarked server exited or never became ready; the message ends with its log's tail."""


def _log_tail(log: Path, chars: int = 4000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else ""


def wait_ready(server: ServerProcess, ready_path: str, log: Path, timeout_s: float) -> None:
    """Poll ``ready_path`` until it answers 200; raise `ServerFailed` if the process exits first or the
    deadline passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise ServerFailed(f"server exited with {server.process.returncode}:\n{_log_tail(log)}")
        try:
            with urllib.request.urlopen(server.base_url + ready_path, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise ServerFailed(
        f"server not ready at {server.base_url}{ready_path} after {timeout_s:.0f} s:\n{_log_tail(log)}"
    )


@contextmanager
def serving(
    argv: list[str], port: int, log: Path, ready_path: str, env: dict[str, str] | None = None,
    timeout_s: float = 900.0,
) -> Iterator[ServerProcess]:  # fmt: skip
    """Start ``argv`` (a server listening on ``port``) in its own process group, output to ``log``;
    yield once ``ready_path`` answers 200, sampling its tree's memory from then on; stop the group
    (SIGTERM, then SIGKILL after 30 s) on the way out. It runs in the log's directory: ``python -m``
    puts the working directory first on the path, where the repository's ``kernels/`` would shadow
    a package of that name."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=log.parent, start_new_session=True
        )
    server = ServerProcess(f"http://127.0.0.1:{port}", process)
    try:
        wait_ready(server, ready_path, log, timeout_s)
        server.memory.start()
        yield server
    finally:
        server.memory.stop()
        stop_group(process)


def stop_group(process: subprocess.Popen) -> None:
    """End a process started with ``start_new_session`` and everything it started."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
    with suppress(ProcessLookupError):  # children left behind (vLLM's engine core)
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def ratio(mili: float | None, peer: float | None) -> float | str:
    """MILI's figure over the peer's, or "n/a" when either is missing or the peer's is zero."""
    if mili is None or peer is None or peer == 0:
        return "n/a"
    return mili / peer


def print_table(headers: list[str], rows: list[list[object]]) -> None:
    """A Markdown table (pastes into docs/benchmarks.md as is); floats with three decimals."""
    cells = [headers] + [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for i, row in enumerate(cells):
        print("| " + " | ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (width + 2) for width in widths) + "|")
