"""The router image, run as the operator's router Deployment runs it (uid 1000, read-only root
filesystem, no capabilities): `mili-gateway` in front of `vllm-router`, in front of a real `mili serve`
worker on loopback."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from integration.router.processes import SERVED_NAME, Worker, free_port_on

from images.docker_engine import DockerEngine
from mili.operator.router import ROUTER_UID
from mili_testing import answers_ok, wait_until

WORKER_HOST = "127.0.0.5"
ROUTER_HOST = "127.0.0.6"


@pytest.fixture(scope="module")
def worker(tiny_qwen3_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    log = tmp_path_factory.mktemp("router-image") / "worker.log"
    running = Worker(tiny_qwen3_dir, WORKER_HOST, free_port_on(WORKER_HOST), log).start()
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


RESTRICTED = (
    "--network", "host", "--read-only", "--user", f"{ROUTER_UID}:{ROUTER_UID}",
    "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
)  # fmt: skip


def test_the_gateway_and_router_containers_proxy_a_worker(
    docker: DockerEngine, router_image: str, worker: Worker
):
    port, metrics_port = free_port_on(ROUTER_HOST), free_port_on(ROUTER_HOST)
    gateway_port, gateway_metrics_port = free_port_on(ROUTER_HOST), free_port_on(ROUTER_HOST)
    suffix = uuid.uuid4().hex[:8]
    names = (f"mili-router-test-{suffix}", f"mili-gateway-test-{suffix}")
    docker.run(
        "run", "--detach", "--name", names[0], *RESTRICTED,
        router_image, "--host", ROUTER_HOST, "--port", str(port),
        "--prometheus-host", ROUTER_HOST, "--prometheus-port", str(metrics_port),
        "--worker-urls", worker.url, "--worker-startup-check-interval", "1", "--policy", "cache_aware",
    )  # fmt: skip
    docker.run(
        "run", "--detach", "--name", names[1], *RESTRICTED, "--entrypoint", "mili-gateway",
        router_image, "--host", ROUTER_HOST, "--port", str(gateway_port),
        "--router-url", f"http://{ROUTER_HOST}:{port}", "--hold-timeout", "60",
        "--metrics-host", ROUTER_HOST, "--metrics-port", str(gateway_metrics_port),
    )  # fmt: skip
    url = f"http://{ROUTER_HOST}:{gateway_port}"

    def logs() -> str:
        results = [docker.run("logs", name, check=False) for name in names]
        return "\n".join((result.stdout + result.stderr)[-3000:] for result in results)

    try:
        wait_until(
            lambda: answers_ok(f"{url}/readiness"), "the router behind the gateway", 90, diagnostics=logs
        )
        api = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        completion = api.completions.create(model=SERVED_NAME, prompt="Hello", max_tokens=3)
        assert completion.usage.completion_tokens == 3
        metrics = httpx.get(f"http://{ROUTER_HOST}:{metrics_port}/metrics", timeout=10).text
        decision = f'vllm_router_policy_decisions_total{{policy="cache_aware",worker="{worker.url}"}} 1'
        assert decision in metrics
        gateway_metrics = httpx.get(f"http://{ROUTER_HOST}:{gateway_metrics_port}/metrics", timeout=10).text
        assert "mili_router_held_requests 0.0" in gateway_metrics
    finally:
        for name in names:
            docker.run("rm", "--force", name, check=False)
