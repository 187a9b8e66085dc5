"""Real `mili serve` workers behind the real `vllm-router` binary (processes, loopback, free ports)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mili_testing import answers_ok, fail_if_exited, free_port, require_binary, stop_process, wait_until

SERVED_NAME = "tiny"
BLOCK_SIZE = 16


def router_binary() -> str:
    """vllm-router from this venv (pip puts it next to python), else from PATH."""
    beside = Path(sys.executable).parent / "vllm-router"
    return str(beside) if beside.exists() else require_binary("vllm-router")


@dataclass
class Worker:
    url: str
    kv_events: str
    process: subprocess.Popen
    log: Path

    def requests_served(self) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "mili_requests_total"
        )


def start_worker(model_dir: Path, log_dir: Path, index: int) -> Worker:
    port, kv_port = free_port(), free_port()
    log = log_dir / f"worker-{index}.log"
    mili = shutil.which("mili", path=str(Path(sys.executable).parent)) or "mili"
    command = [
        mili, "serve", "--model", str(model_dir), "--served-name", SERVED_NAME, "--device", "cpu",
        "--max-model-len", "512", "--num-kv-blocks", "40", "--block-size", str(BLOCK_SIZE),
        "--host", "127.0.0.1", "--port", str(port), "--kv-events-endpoint", f"tcp://127.0.0.1:{kv_port}",
    ]  # fmt: skip
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=os.environ.copy())
    return Worker(f"http://127.0.0.1:{port}", f"tcp://127.0.0.1:{kv_port}", process, log)


@dataclass
class Router:
    url: str
    process: subprocess.Popen
    log: Path


@pytest.fixture(scope="module")
def workers(tiny_qwen3_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Worker]]:
    """Two ready workers publishing KV events."""
    log_dir = tmp_path_factory.mktemp("routing")
    started = [start_worker(tiny_qwen3_dir, log_dir, i) for i in range(2)]
    try:
        for worker in started:
            wait_until(
                lambda w=worker: fail_if_exited(w.process, "worker", w.log) or answers_ok(f"{w.url}/ready"),
                "a worker to become ready",
                timeout=180,
                diagnostics=lambda w=worker: w.log.read_text()[-2000:],
            )
        yield started
    finally:
        for worker in started:
            stop_process(worker.process)


@pytest.fixture(scope="module")
def start_router(workers: list[Worker], tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """``start_router(policy, *extra_args)``: the real router in front of ``workers``, ready."""
    binary = router_binary()
    log_dir = tmp_path_factory.mktemp("router")
    started: list[Router] = []

    def start(policy: str, *extra: str) -> Router:
        port = free_port()
        log = log_dir / f"router-{len(started)}.log"
        command = [
            binary, "--host", "127.0.0.1", "--port", str(port), "--policy", policy,
            "--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port()),
            "--worker-urls", *[w.url for w in workers], *extra,
        ]  # fmt: skip
        with log.open("wb") as sink:
            process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
        router = Router(f"http://127.0.0.1:{port}", process, log)
        started.append(router)
        wait_until(
            lambda: fail_if_exited(process, "vllm-router", log) or answers_ok(f"{router.url}/health"),
            "the router to become ready",
            timeout=60,
            diagnostics=lambda: log.read_text()[-2000:],
        )
        return router

    yield start
    for router in started:
        stop_process(router.process)
