"""Servers for the HTTP tests: a real uvicorn on a free loopback port, in a background thread.

Built on the tiny random Qwen3 checkpoint (fast on CPU). One shared server per session; tests that
need a different engine setup (small KV pool, API key) start their own with ``RunningServer``.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from mili.worker.config import EngineConfig
from mili.worker.server import create_app
from mili.worker.server.async_engine import AsyncEngine
from mili.worker.server.limits import ServerLimits
from mili_testing import answers_ok, wait_until

SERVED_NAME = "tiny"
READY_TIMEOUT_S = 120.0


class RunningServer:
    """``create_app(config)`` served by uvicorn on 127.0.0.1:<free port> until ``stop()``."""

    def __init__(
        self,
        config: EngineConfig,
        api_key: str | None = None,
        limits: ServerLimits | None = None,
        **app_options,
    ) -> None:
        self.app = create_app(config, api_key=api_key, limits=limits, **app_options)
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, log_level="warning", timeout_graceful_shutdown=5, access_log=False)
        )
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    @property
    def engine(self) -> AsyncEngine:
        return self.app.state.mili.engine

    def start(self) -> RunningServer:
        self.thread.start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if answers_ok(f"{self.url}/ready", timeout=5):
                return self
            if not self.thread.is_alive() or self.engine.load_error:
                break
            time.sleep(0.05)
        raise RuntimeError(f"server did not become ready: {self.engine.unavailable_reason()}")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of /metrics, keyed by (name, sorted labels)."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def sample(self, name: str, **labels: str) -> float:
        key = (name, tuple(sorted({"model_name": SERVED_NAME, **labels}.items())))
        return self.metrics().get(key, 0.0)


def poll_until(condition, timeout: float, message: str, interval: float = 0.05):
    """`wait_until` with the argument order the server tests read best: (condition, timeout, message)."""
    return wait_until(condition, message, timeout, interval)


@pytest.fixture(scope="session")
def tiny_config(tiny_qwen3_dir: Path):
    """``tiny_config(**overrides)``: an EngineConfig of the tiny Qwen3 (served as "tiny", 512 tokens, CPU)."""

    def make(**overrides) -> EngineConfig:
        settings = dict(model=str(tiny_qwen3_dir), served_name=SERVED_NAME, max_model_len=512, device="cpu")
        return EngineConfig(**{**settings, **overrides})

    return make


@pytest.fixture(scope="session")
def start_server() -> Iterator:
    """``start_server(config, api_key=None, limits=None)``: a ready RunningServer, stopped at the end of
    the session."""
    started: list[RunningServer] = []

    def start(
        config: EngineConfig, api_key: str | None = None, limits: ServerLimits | None = None, **app_options
    ) -> RunningServer:
        started.append(RunningServer(config, api_key=api_key, limits=limits, **app_options).start())
        return started[-1]

    yield start
    for running in started:
        running.stop()


@pytest.fixture(scope="session")
def server(start_server, tiny_config) -> RunningServer:
    """The shared server: tiny Qwen3, max_model_len 512, no API key."""
    return start_server(tiny_config())


@pytest.fixture(scope="session")
def poll():
    """``poll(condition, timeout, message)``: wait for a real condition, failing at the deadline."""
    return poll_until
