"""Helpers shared by the test suites (importable as `mili_testing`: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

CI_STRICT = os.environ.get("MILI_CI_STRICT") == "1"
T = TypeVar("T")


def require_binary(name: str) -> str:
    """Path of ``name`` on PATH; skip the test when absent, except under CI where it fails."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed"
        if CI_STRICT:
            pytest.fail(f"{message} (MILI_CI_STRICT=1: .ci/run should have installed it)")
        pytest.skip(message)
    return path


def wait_until(
    condition: Callable[[], T],
    what: str,
    timeout: float = 30.0,
    interval: float = 0.05,
    diagnostics: Callable[[], str] | None = None,
) -> T:
    """Poll ``condition`` until it returns something truthy (and return that); fail naming ``what``,
    with ``diagnostics()`` appended, after ``timeout`` seconds. The readiness wait of every test."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            details = f"\n{diagnostics()}" if diagnostics is not None else ""
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}{details}")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process(process: subprocess.Popen | None, grace: float = 15.0) -> None:
    """SIGTERM, then SIGKILL when ``grace`` seconds pass (like a pod deletion); no-op if already gone."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def answers_ok(url: str, timeout: float = 2.0) -> bool:
    """Whether ``GET url`` answers 200 now; a refused or timed-out connection is just "not yet"."""
    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def fail_if_exited(process: subprocess.Popen | None, what: str, log_path: Path) -> None:
    """Fail the test at once, with the log's tail, when a process it waits on has died."""
    if process is not None and process.poll() is not None:
        tail = log_path.read_text(errors="replace")[-3000:]
        pytest.fail(f"{what} exited with {process.returncode}:\n{tail}")
