"""The real vllm-router with no worker at all, the real `mili-gateway` in front of it, and a real
`mili serve` worker that joins only later (as the first pod of a MiliDeployment woken from zero)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from integration.router.processes import Router, free_port_on, metric_samples

from mili_testing import answers_ok, fail_if_exited, stop_process, wait_until

HOST = "127.0.0.5"
WORKER_HOST = "127.0.0.6"
API_KEY = "gateway-test-key"
READY_TIMEOUT = 60.0


class RouterAtZero(Router):
    """The router with no worker URL: it starts at once, and /readiness stays 503 until one joins."""

    def __init__(self, log_path: Path) -> None:
        super().__init__(HOST, [], log_path)

    def start(self) -> RouterAtZero:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)

        def alive() -> bool:
            fail_if_exited(self.process, "vllm-router", self.log_path)
            return answers_ok(f"{self.url}/health")

        wait_until(alive, "vllm-router to answer /health", timeout=READY_TIMEOUT)
        return self

    def add_worker(self, url: str) -> None:
        """What service discovery does when a worker pod turns ready."""
        answer = httpx.post(f"{self.url}/add_worker", params={"url": url}, timeout=30)
        assert answer.status_code < 300, answer.text


class GatewayProcess:
    """`mili-gateway` (the console script of this venv) in front of ``router_url``."""

    def __init__(self, router_url: str, log_path: Path, hold_timeout: float, max_held: int) -> None:
        self.port = free_port_on(HOST)
        self.metrics_port = free_port_on(HOST)
        self.url = f"http://{HOST}:{self.port}"
        self.log_path = log_path
        self.command = [
            str(Path(sys.executable).with_name("mili-gateway")),
            "--host", HOST,
            "--port", str(self.port),
            "--router-url", router_url,
            "--hold-timeout", str(hold_timeout),
            "--max-held-requests", str(max_held),
            "--metrics-host", HOST,
            "--metrics-port", str(self.metrics_port),
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> GatewayProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)

        def alive() -> bool:
            fail_if_exited(self.process, "mili-gateway", self.log_path)
            return answers_ok(f"{self.url}/gateway/health")

        wait_until(alive, "mili-gateway to answer /gateway/health", timeout=READY_TIMEOUT)
        return self

    def held_requests(self) -> float:
        return metric_samples(f"http://{HOST}:{self.metrics_port}/metrics")[("mili_router_held_requests", ())]

    def stop(self) -> None:
        stop_process(self.process)


@pytest.fixture(scope="module")
def router_at_zero(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterAtZero]:
    router = RouterAtZero(tmp_path_factory.mktemp("gateway-router") / "router.log").start()
    yield router
    router.stop()


@pytest.fixture
def gateway_factory(router_at_zero: RouterAtZero, tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    started: list[GatewayProcess] = []

    def start(hold_timeout: float, max_held: int) -> GatewayProcess:
        log = tmp_path / f"gateway-{len(started)}.log"
        started.append(GatewayProcess(router_at_zero.url, log, hold_timeout, max_held).start())
        return started[-1]

    yield start
    for gateway in started:
        gateway.stop()
