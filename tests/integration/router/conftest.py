"""Two real `mili serve` workers on their own loopback addresses (127.0.0.2, 127.0.0.3; one HTTP port,
as pods in a cluster) publishing KV events, with an API key, behind real `vllm-router` processes.

The workers bind their KV-event publishers as the operator renders them (``tcp://*:PORT``; each its
own port here, since both run on one host), so a router that learns the sources from the workers
rewrites the bind address to the worker's own host, as it does for pods.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from integration.router.processes import Router, Worker, free_port_on, router_binary

WORKER_HOSTS = ("127.0.0.2", "127.0.0.3")
ROUTER_HOST = "127.0.0.4"
API_KEY = "router-test-key"


@pytest.fixture(scope="session")
def workers(tiny_qwen3_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Worker]]:
    router_binary()  # skip before paying for the workers
    logs = tmp_path_factory.mktemp("router-workers")
    port = free_port_on(WORKER_HOSTS[0])
    started = []
    try:
        for host in WORKER_HOSTS:
            events, replay = (f"tcp://*:{free_port_on('0.0.0.0')}" for _ in range(2))
            log = logs / f"{host}.log"
            worker = Worker(
                tiny_qwen3_dir, host, port, log, "--api-key", API_KEY, kv_events=events, kv_replay=replay
            )
            started.append(worker.start())
        for worker in started:
            worker.wait_ready()
        yield started
    finally:
        for worker in started:
            worker.stop()


@pytest.fixture(scope="session")
def start_router(
    workers: list[Worker], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Router]]:
    """``start_router(*args)``: a ready `vllm-router` in front of ``workers``, stopped at the end."""
    logs = tmp_path_factory.mktemp("routers")
    started: list[Router] = []

    def start(*args: str) -> Router:
        log = logs / f"router-{len(started)}.log"
        router = Router(ROUTER_HOST, [worker.url for worker in workers], log, *args)
        started.append(router)
        return router.start()

    yield start
    for router in started:
        router.stop()


@pytest.fixture(scope="session")
def router(start_router: Callable[..., Router]) -> Router:
    """The router as the operator runs it by default (``cache_aware``)."""
    return start_router("--policy", "cache_aware")
