"""Two real `mili serve` workers on their own loopback addresses (127.0.0.2, 127.0.0.3; one port, as
pods in a cluster) behind the real `vllm-router`, with an API key end to end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from integration.router.processes import Router, Worker, free_port_on, router_binary

WORKER_HOSTS = ("127.0.0.2", "127.0.0.3")
ROUTER_HOST = "127.0.0.4"
API_KEY = "router-test-key"


@pytest.fixture(scope="module")
def workers(tiny_qwen3_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Worker]]:
    router_binary()  # skip before paying for the workers
    logs = tmp_path_factory.mktemp("router-workers")
    port = free_port_on(WORKER_HOSTS[0])
    started = [
        Worker(tiny_qwen3_dir, host, port, logs / f"{host}.log", "--api-key", API_KEY).start()
        for host in WORKER_HOSTS
    ]
    try:
        for worker in started:
            worker.wait_ready()
        yield started
    finally:
        for worker in started:
            worker.stop()


@pytest.fixture(scope="module")
def router(workers: list[Worker], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Router]:
    log = tmp_path_factory.mktemp("router") / "router.log"
    running = Router(ROUTER_HOST, [worker.url for worker in workers], log, "--policy", "cache_aware")
    running.start()
    yield running
    running.stop()
