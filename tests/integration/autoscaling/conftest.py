"""Fixtures: two real `mili serve` workers and real Prometheus servers scraping them (see loopback.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from integration.autoscaling.loopback import (
    WORKER_JOB,
    Load,
    PrometheusServer,
    Worker,
    pod_target,
    worker_targets,
)


@pytest.fixture(scope="session")
def workers(tiny_qwen3_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Worker]]:
    """Two `mili serve` workers of the MiliDeployment mili-test/chat, started side by side."""
    logs = tmp_path_factory.mktemp("workers")
    pair = [Worker(tiny_qwen3_dir, logs / f"worker-{index}.log") for index in range(2)]
    try:
        for worker in pair:
            worker.start()
        for worker in pair:
            worker.wait_ready()
        yield pair
    finally:
        for worker in pair:
            worker.stop()


@pytest.fixture(scope="session")
def start_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], PrometheusServer]]:
    """Start a Prometheus of one's own (stopped at the end of the session at the latest)."""
    started: list[PrometheusServer] = []

    def start() -> PrometheusServer:
        server = PrometheusServer(tmp_path_factory.mktemp("prometheus"))
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def prometheus(start_prometheus: Callable[[], PrometheusServer], workers: list[Worker]) -> PrometheusServer:
    """The shared Prometheus, scraping both workers (plus pods its relabeling must drop)."""
    server = start_prometheus()
    server.set_targets(
        WORKER_JOB,
        [
            *worker_targets(workers),
            pod_target("127.0.0.1:9", "chat-starting", ready=False),  # not ready: not scraped
            pod_target("127.0.0.1:9", "someone-else", app="web"),  # not a worker
        ],
    )
    server.wait_for_workers(2)
    return server


@pytest.fixture
def load(workers: list[Worker]) -> Iterator[Callable[..., Load]]:
    """``load(clients_per_worker)``: start closed-loop clients on both workers; stopped after the test."""
    running: list[Load] = []

    def start(clients_per_worker: int = 4) -> Load:
        generator = Load([worker.url for worker in workers], clients_per_worker)
        running.append(generator)
        return generator.start()

    yield start
    for generator in running:
        generator.stopping.set()
        for thread in generator.threads:
            thread.join(60)
