"""The whole path, in order: apply the CPU sample -> ready workers -> an OpenAI answer -> metrics in
Prometheus -> load scales it up and, after the window, down -> deletion removes the children.

The same scenarios run in local mode (CI) and kind mode; every wait polls a real condition.
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from e2e.harness.cluster import ROOT, E2ECluster, condition, kustomize, wait_for

SAMPLE_DIR = ROOT / "manifests" / "samples" / "cpu"
READY_TIMEOUT = 180.0  # first worker: pod start + model load + warm-up (slow on a 2-core CI machine)
SCALE_TIMEOUT = 150.0
# Short intervals and windows so the scenario takes a minute, not the production five.
AUTOSCALING = {
    "enabled": True,
    "minReplicas": 1,
    "maxReplicas": 2,
    "targetQueueLength": 1,
    "targetKvCacheUsage": 0.9,
    "intervalSeconds": 2,
    "scaleUpStabilizationSeconds": 0,
    "scaleDownStabilizationSeconds": 8,
}
LOAD_CONCURRENCY = 24  # more than the sample's maxNumSeqs (16): requests must wait


@pytest.fixture(scope="module")
def sample(e2e: E2ECluster) -> Iterator[dict[str, Any]]:
    """The CPU sample, applied as `kubectl apply -k manifests/samples/cpu` would."""
    (manifest,) = [doc for doc in kustomize(SAMPLE_DIR) if doc["kind"] == "MiliDeployment"]
    e2e.apply(manifest)
    yield manifest
    if e2e.get("MiliDeployment", manifest["metadata"]["name"]) is not None:
        e2e.delete(manifest["metadata"]["name"])


def name_of(sample: dict[str, Any]) -> str:
    return sample["metadata"]["name"]


def owned_by(child: dict[str, Any] | None, parent: dict[str, Any]) -> bool:
    references = (child or {}).get("metadata", {}).get("ownerReferences") or []
    return any(
        ref.get("kind") == "MiliDeployment"
        and ref.get("uid") == parent["metadata"]["uid"]
        and ref.get("controller")
        for ref in references
    )


def test_applied_sample_becomes_ready(e2e: E2ECluster, sample):
    name = name_of(sample)

    def available() -> dict[str, Any] | None:
        parent = e2e.get("MiliDeployment", name)
        status = (parent or {}).get("status") or {}
        ready = status.get("readyReplicas") == 1 and condition(parent, "Available").get("status") == "True"
        return parent if ready and e2e.ready_worker_urls(name) else None

    parent = wait_for(available, "the sample's worker to be ready", READY_TIMEOUT, e2e.diagnostics)
    assert parent["status"]["endpoint"] == f"http://{name}.{e2e.namespace}.svc:8000/v1"
    deployment, service = e2e.get("Deployment", name), e2e.get("Service", name)
    assert owned_by(deployment, parent) and owned_by(service, parent)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"][container["args"].index("--model") + 1] == sample["spec"]["model"]["source"]
    assert len(e2e.worker_pods(name)) == 1


def test_openai_client_gets_text_from_a_worker(e2e: E2ECluster, sample):
    (url,) = e2e.ready_worker_urls(name_of(sample)).values()
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=120, max_retries=0)
    served = sample["spec"]["model"]["servedName"]
    assert [model.id for model in client.models.list()] == [served]
    reply = client.chat.completions.create(
        model=served,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=12,
        temperature=0,
    )
    assert reply.choices[0].message.content and reply.choices[0].message.content.strip()
    assert reply.usage is not None and reply.usage.completion_tokens > 0


def test_prometheus_has_the_workers_metrics(e2e: E2ECluster, sample):
    name = name_of(sample)
    selector = f'{{namespace="{e2e.namespace}",mili_deployment="{name}"}}'
    (pod,) = e2e.ready_worker_urls(name)

    def generated() -> list[dict[str, Any]]:
        return [
            sample
            for sample in e2e.prometheus_query(f"mili_generation_tokens_total{selector}")
            if float(sample["value"][1]) > 0
        ]

    (series,) = wait_for(generated, "the worker's token counter in Prometheus", 60, e2e.diagnostics)
    assert series["metric"]["pod"] == pod
    assert series["metric"]["model_name"] == sample["spec"]["model"]["servedName"]
    for metric in ("mili_num_requests_waiting", "mili_kv_cache_usage_ratio", "mili_kv_cache_blocks"):
        assert e2e.prometheus_query(f"{metric}{selector}"), f"{metric} is not in Prometheus"


class Load:
    """Keeps ``concurrency`` completions in flight against whatever workers are ready, until stopped."""

    def __init__(self, e2e: E2ECluster, name: str, model: str, concurrency: int) -> None:
        self.e2e, self.name, self.model = e2e, name, model
        self.stopped = threading.Event()
        self.completed = 0
        self.failures: list[str] = []
        self.urls = list(e2e.ready_worker_urls(name).values())
        self.threads = [
            threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(concurrency)
        ]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def _client(self, index: int) -> None:
        with httpx.Client(timeout=300) as http:
            while not self.stopped.is_set():
                url = self.urls[index % len(self.urls)]
                body = {
                    "model": self.model,
                    "prompt": f"Story {index}:",
                    "max_tokens": 16,
                    "ignore_eos": True,
                }
                try:
                    response = http.post(f"{url}/v1/completions", json=body)
                    response.raise_for_status()
                    self.completed += 1
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))

    def __exit__(self, *_: object) -> None:
        self.stopped.set()
        for thread in self.threads:
            thread.join(300)


def entry_time(entry: dict[str, Any]) -> float:
    """Seconds since the epoch of a status history entry (RFC 3339, UTC)."""
    return (
        datetime.datetime.strptime(entry["time"], "%Y-%m-%dT%H:%M:%SZ")
        .replace(tzinfo=datetime.timezone.utc)
        .timestamp()
    )


def deployment_replicas(e2e: E2ECluster, name: str) -> int | None:
    return ((e2e.get("Deployment", name) or {}).get("spec") or {}).get("replicas")


def test_load_scales_up_and_back_down_after_the_window(e2e: E2ECluster, sample):
    name, model = name_of(sample), sample["spec"]["model"]["servedName"]
    e2e.patch_spec(name, {"autoscaling": AUTOSCALING, **e2e.capacity_patch()})
    wait_for(
        lambda: e2e.ready_worker_urls(name),
        "a ready worker after the spec change",
        READY_TIMEOUT,
        e2e.diagnostics,
    )
    first_pods = set(e2e.ready_worker_urls(name))

    with Load(e2e, name, model, LOAD_CONCURRENCY) as load:  # stops (and waits for its requests) on exit
        wait_for(
            lambda: deployment_replicas(e2e, name) == 2,
            "the autoscaler to scale up to 2",
            SCALE_TIMEOUT,
            e2e.diagnostics,
        )
    assert not load.failures, load.failures[:3]
    assert load.completed > 0

    parent = e2e.get("MiliDeployment", name)
    up = [
        entry
        for entry in parent["status"]["autoscaling"]["history"]
        if entry.get("to", 0) > entry.get("from", 0)
    ]
    assert up, parent["status"]["autoscaling"]

    # The new worker serves.
    new_urls = wait_for(
        lambda: {pod: url for pod, url in e2e.ready_worker_urls(name).items() if pod not in first_pods},
        "the second worker to be ready",
        READY_TIMEOUT,
        e2e.diagnostics,
    )
    (new_url,) = new_urls.values()
    answer = httpx.post(
        f"{new_url}/v1/completions", json={"model": model, "prompt": "Hello", "max_tokens": 4}, timeout=120
    )
    assert answer.status_code == 200 and answer.json()["choices"][0]["text"]

    # Without load the recommendation falls to 1, but only the end of the stabilization window lets it:
    # the recommendation was 2 when it scaled up, so it cannot come down within the window after that.
    wait_for(
        lambda: deployment_replicas(e2e, name) == 1,
        "the autoscaler to scale back down to 1",
        SCALE_TIMEOUT,
        e2e.diagnostics,
    )
    history = e2e.get("MiliDeployment", name)["status"]["autoscaling"]["history"]
    last_up = max(entry_time(entry) for entry in history if entry["to"] > entry["from"])
    (down,) = [entry for entry in history if entry["to"] < entry["from"]]
    assert (down["from"], down["to"]) == (2, 1)
    assert entry_time(down) - last_up >= AUTOSCALING["scaleDownStabilizationSeconds"], history
    wait_for(lambda: len(e2e.worker_pods(name)) == 1, "the extra worker pod to stop", 60, e2e.diagnostics)
    parent = e2e.get("MiliDeployment", name)
    assert condition(parent, "ScalingActive").get("status") == "True", parent["status"]


def test_deleting_the_milideployment_removes_its_children(e2e: E2ECluster, sample):
    name = name_of(sample)
    e2e.delete(name)
    wait_for(
        lambda: e2e.get("Deployment", name) is None and e2e.get("Service", name) is None,
        "the Deployment and Service to be garbage-collected",
        60,
        e2e.diagnostics,
    )
    wait_for(lambda: not e2e.worker_pods(name), "the worker pods to stop", 60, e2e.diagnostics)
    assert e2e.get("MiliDeployment", name) is None
