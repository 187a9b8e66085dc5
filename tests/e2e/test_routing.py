"""Through the router pods (mili-gateway in front of vllm-router), as clients reach a MiliDeployment:
requests spread over three workers and a prompt family stays on one, a worker killed mid-stream costs
no request that had not started, and a MiliDeployment at zero replicas wakes for a request that is
then served with no 5xx within coldStartTimeoutSeconds, and goes back to zero when idle.

The same scenarios run in local mode (CI) and kind mode; every wait polls a real condition.
"""

from __future__ import annotations

import concurrent.futures
import copy
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from e2e.harness.cluster import ROOT, E2ECluster, kustomize, wait_for

SAMPLE_DIR = ROOT / "manifests" / "samples" / "cpu"
READY_TIMEOUT = 300.0  # three workers start at once on a 2-core machine
STREAM_READ_TIMEOUT = 60.0  # a stream that waits this long for a chunk has stalled
COLD_START_TIMEOUT = 150  # spec.autoscaling.coldStartTimeoutSeconds of the scale-from-zero scenario
FAMILY_PREFIX = (
    "You are a careful assistant for a small public library. Answer questions about opening hours, "
    "borrowing rules, late fees and the reading rooms politely and briefly, and never invent a rule "
    "that the library does not have. The visitor asks: "
)


def manifest(e2e: E2ECluster, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """The CPU sample under another name, with ``spec`` merged over its spec (and the cluster's
    capacity patch, so several workers fit a kind node)."""
    (sample,) = [doc for doc in kustomize(SAMPLE_DIR) if doc["kind"] == "MiliDeployment"]
    body = copy.deepcopy(sample)
    body["metadata"] = {"name": name}
    body["spec"].update({**spec, **e2e.capacity_patch()})
    body["spec"]["engine"] = {**body["spec"]["engine"], "maxNumSeqs": 4}
    return body


def served_name(body: dict[str, Any]) -> str:
    return body["spec"]["model"]["servedName"]


def client(url: str, timeout: float = 120) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=timeout, max_retries=0)


@pytest.fixture(scope="class")
def routed(e2e: E2ECluster) -> Iterator[dict[str, Any]]:
    """Three workers behind the router, all ready."""
    body = manifest(e2e, "routed", {"replicas": 3})
    e2e.apply(body)

    wait_for(lambda: router_knows(e2e, "routed", 3), "the router to route to three workers", READY_TIMEOUT,
             e2e.diagnostics)  # fmt: skip
    yield body
    e2e.delete("routed")
    wait_for(lambda: not e2e.worker_pods("routed"), "the routed workers to go", 120, e2e.diagnostics)


def router_knows(e2e: E2ECluster, name: str, workers: int) -> bool:
    """Whether ``workers`` workers are ready and the router has found them all (its `/workers`,
    through the gateway, which passes the router's own endpoints on at once)."""
    url = e2e.router_url(name)
    if url is None or len(e2e.ready_worker_urls(name)) != workers:
        return False
    try:
        return httpx.get(f"{url}/workers", timeout=5).json()["total"] == workers
    except (httpx.HTTPError, ValueError, KeyError):
        return False


def decisions(e2e: E2ECluster, name: str) -> dict[str, float]:
    """Requests the router sent to each worker URL so far, as Prometheus scraped them."""
    selector = f'namespace="{e2e.namespace}",mili_deployment="{name}"'
    series = e2e.prometheus_query(f"sum by (worker) (vllm_router_policy_decisions_total{{{selector}}})")
    return {item["metric"]["worker"]: float(item["value"][1]) for item in series}


def decisions_totalling(e2e: E2ECluster, name: str, total: float) -> dict[str, float]:
    def scraped() -> dict[str, float] | None:
        seen = decisions(e2e, name)
        return seen if sum(seen.values()) >= total else None

    return wait_for(scraped, f"{total:g} routing decisions in Prometheus", 90, e2e.diagnostics)


class TestThreeWorkers:
    """Torn down (class scope) before the scale-from-zero scenario, which needs the CPU."""

    def test_requests_reach_all_three_workers_and_a_family_stays_on_one(self, e2e: E2ECluster, routed):
        requests_reach_all_three_workers_and_a_family_stays_on_one(e2e, routed)

    def test_a_worker_killed_mid_stream_loses_no_request_not_yet_started(self, e2e: E2ECluster, routed):
        a_worker_killed_mid_stream_loses_no_request_not_yet_started(e2e, routed)


def requests_reach_all_three_workers_and_a_family_stays_on_one(e2e: E2ECluster, routed):
    # On a prefix miss cache_aware picks the least-loaded worker: requests in flight together spread
    # (one after the other, with equal loads, they would all land on one worker).
    api = client(e2e.router_url("routed"))
    colours = ["red", "green", "blue", "amber", "violet", "teal", "olive", "coral", "ivory"]
    distinct = [f"Note {index}: {colour} " * 3 for index, colour in enumerate(colours)]
    with concurrent.futures.ThreadPoolExecutor(len(distinct)) as pool:
        answers = list(
            pool.map(
                lambda prompt: api.completions.create(
                    model=served_name(routed), prompt=prompt, max_tokens=16
                ),
                distinct,
            )
        )
    assert all(answer.usage.completion_tokens == 16 for answer in answers)
    before = decisions_totalling(e2e, "routed", len(distinct))
    assert len([url for url, count in before.items() if count > 0]) == 3, before

    questions = ["When do you open?", "Can I renew a book?", "Is there a fee?", "Where is room B?"]
    for question in questions:
        api.completions.create(model=served_name(routed), prompt=FAMILY_PREFIX + question, max_tokens=2)
    after = decisions_totalling(e2e, "routed", sum(before.values()) + len(questions))
    moved = {url: after.get(url, 0) - before.get(url, 0) for url in after}
    assert sorted(moved.values()) == [0, 0, len(questions)], moved  # cache_aware kept the family together


def a_worker_killed_mid_stream_loses_no_request_not_yet_started(e2e: E2ECluster, routed):
    url, model = e2e.router_url("routed"), served_name(routed)
    first_chunks = threading.Semaphore(0)

    def stream(index: int) -> tuple[int, BaseException | None]:
        """(chunks received, the error that ended the stream early, if any)."""
        received = 0
        try:
            chunks = client(url, timeout=STREAM_READ_TIMEOUT).completions.create(
                model=model, prompt=f"Story {index}: once upon a time", max_tokens=64, stream=True
            )
            for _chunk in chunks:
                received += 1
                if received == 1:
                    first_chunks.release()
        except (openai.APIError, httpx.HTTPError) as error:
            return received, error
        return received, None

    pool = concurrent.futures.ThreadPoolExecutor(16)
    try:
        streams = [pool.submit(stream, index) for index in range(6)]
        for _ in streams:  # every stream has its first chunk: they are all mid-stream
            assert first_chunks.acquire(timeout=120), "a stream got no first chunk"
        victim = next(iter(e2e.ready_worker_urls("routed")))
        e2e.kill_worker("routed", victim)
        later = [
            pool.submit(
                lambda i=i: client(url).completions.create(model=model, prompt=f"After {i}", max_tokens=3)
            )
            for i in range(9)
        ]
        failures = [repr(error) for future in later if (error := future.exception(timeout=180)) is not None]
        assert not failures, f"requests sent after the kill failed: {failures}"
        assert all(future.result().usage.completion_tokens == 3 for future in later)
        # Streams on the killed worker break at once; the others, on the survivors, run to the end:
        # none may hang until its read timeout (cache_aware spread the six over the three workers).
        ended = [future.result(timeout=180) for future in streams]
        hung = [
            error for _, error in ended if isinstance(error, (openai.APITimeoutError, httpx.TimeoutException))
        ]
        assert not hung, f"streams stalled after the kill: {ended}"
        assert any(error is None and received >= 64 for received, error in ended), f"none survived: {ended}"
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    wait_for(lambda: router_knows(e2e, "routed", 3), "the killed worker back", READY_TIMEOUT, e2e.diagnostics)


def test_an_idle_deployment_goes_to_zero_and_a_request_wakes_it(e2e: E2ECluster):
    autoscaling = {
        "enabled": True,
        "minReplicas": 0,
        "maxReplicas": 1,
        "intervalSeconds": 2,
        "scaleUpStabilizationSeconds": 0,
        "scaleDownStabilizationSeconds": 6,
        "coldStartTimeoutSeconds": COLD_START_TIMEOUT,
    }
    body = manifest(e2e, "wakes", {"replicas": 1, "autoscaling": autoscaling})
    e2e.apply(body)  # created at minReplicas: no worker until a request comes

    def at_zero() -> bool:
        deployment = e2e.get("Deployment", "wakes") or {}
        return deployment.get("spec", {}).get("replicas") == 0 and not e2e.worker_pods("wakes")

    try:
        wait_for(at_zero, "the workers at zero", 120, e2e.diagnostics)
        router = wait_for(lambda: e2e.router_url("wakes"), "the router at zero", 120, e2e.diagnostics)

        sent = time.monotonic()
        answer = httpx.post(
            f"{router}/v1/completions",
            json={"model": served_name(body), "prompt": "Good morning", "max_tokens": 3},
            timeout=COLD_START_TIMEOUT + 30,
        )
        waited = time.monotonic() - sent
        assert answer.status_code == 200, f"{answer.status_code} after {waited:.0f} s: {answer.text}"
        assert answer.json()["usage"]["completion_tokens"] == 3
        assert waited < COLD_START_TIMEOUT
        history = (e2e.get("MiliDeployment", "wakes") or {})["status"]["autoscaling"]["history"]
        assert any("waiting at zero replicas" in entry["reason"] for entry in history), history

        # Idle again: back to zero after the scale-down window.
        wait_for(at_zero, "idle to scale the workers to zero again", 180, e2e.diagnostics)
    finally:
        e2e.delete("wakes")
