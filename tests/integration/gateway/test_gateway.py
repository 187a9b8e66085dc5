"""The holding step with the real router and a real worker that starts late: a request sent while the
MiliDeployment has no worker waits and is served (no 5xx); beyond the bound or the timeout, 503 +
Retry-After; headers (the API key) pass through both ways."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import httpx
import openai
import pytest
from integration.gateway.conftest import API_KEY, WORKER_HOST, GatewayProcess, RouterAtZero
from integration.router.processes import SERVED_NAME, Worker, free_port_on

from mili_testing import wait_until

pytestmark = pytest.mark.slow


def completion_body() -> dict:
    return {"model": SERVED_NAME, "prompt": "Hello there", "max_tokens": 4}


def test_a_request_held_past_the_cold_start_timeout_gets_503_with_retry_after(gateway_factory) -> None:
    gateway = gateway_factory(hold_timeout=1.0, max_held=4)
    started = time.monotonic()
    answer = httpx.post(f"{gateway.url}/v1/completions", json=completion_body(), timeout=30)
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "5"
    assert answer.json()["error"]["code"] == "no_ready_worker"
    assert time.monotonic() - started >= 1.0
    # The router's own endpoints never wait: its /readiness tells the truth at once.
    assert httpx.get(f"{gateway.url}/readiness", timeout=5).status_code == 503


def test_requests_sent_at_zero_wait_for_the_late_worker_and_are_served(
    gateway_factory, router_at_zero: RouterAtZero, tiny_qwen3_dir: Path, tmp_path: Path
) -> None:
    gateway: GatewayProcess = gateway_factory(hold_timeout=120.0, max_held=2)
    api = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)

    def complete() -> int:
        return api.completions.create(**completion_body()).usage.completion_tokens

    def stream_chat() -> str:
        stream = api.chat.completions.create(
            model=SERVED_NAME, messages=[{"role": "user", "content": "Count"}], max_tokens=5, stream=True
        )
        return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        held = [pool.submit(complete), pool.submit(stream_chat)]
        wait_until(lambda: gateway.held_requests() == 2, "both requests to be held", timeout=30)

        beyond = httpx.post(f"{gateway.url}/v1/completions", json=completion_body(), timeout=30)
        assert beyond.status_code == 503
        assert beyond.headers["retry-after"] == "5"
        assert beyond.json()["error"]["code"] == "holding_full"

        port = free_port_on(WORKER_HOST)
        worker = Worker(tiny_qwen3_dir, WORKER_HOST, port, tmp_path / "worker.log", "--api-key", API_KEY)
        worker.start()
        try:
            worker.wait_ready()
            assert not any(request.done() for request in held), "a held request ended before the worker"
            router_at_zero.add_worker(worker.url)
            assert held[0].result(timeout=120) == 4
            assert held[1].result(timeout=120)
            assert gateway.held_requests() == 0

            # Authorization passes through: the worker checks the key and its 401 comes back.
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(
                    base_url=f"{gateway.url}/v1", api_key="wrong", max_retries=0
                ).completions.create(**completion_body())
        finally:
            worker.stop()
