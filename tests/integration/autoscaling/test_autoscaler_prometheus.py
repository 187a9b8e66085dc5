"""The autoscaler's real read path (PromQL against a real Prometheus scraping real workers → decision)
under load, after it, and with Prometheus gone; plus the shipped scrape config and its relabeling."""

from __future__ import annotations

import asyncio
import subprocess
import time
from dataclasses import dataclass

import prometheus_client
import pytest
import yaml
from integration.autoscaling.loopback import (
    DEPLOYMENT,
    NAMESPACE,
    ROUTER_JOB,
    SHIPPED_CONFIG,
    WORKER_JOB,
    loopback_config,
    pod_target,
    worker_targets,
)

from mili.operator.autoscaling import (
    PROMETHEUS_UNAVAILABLE,
    Decision,
    Observation,
    Recommendation,
    decide,
)
from mili.operator.prometheus_api import PrometheusClient, PrometheusError, QuerySettings
from mili.operator.spec import AutoscalingSpec
from mili_testing import free_port, require_binary, wait_until

WINDOW_SECONDS = 6  # scale-down stabilization
SETTINGS = QuerySettings(window="4s", timeout_seconds=2.0)
SPEC = AutoscalingSpec(
    enabled=True,
    min_replicas=1,
    max_replicas=6,
    target_kv_cache_usage=0.7,
    target_queue_length=1.0,
    scale_down_stabilization_seconds=WINDOW_SECONDS,
)
ROUND_SECONDS = 0.5  # the autoscaler's interval in this test


@dataclass
class Round:
    time: float
    observation: Observation
    decision: Decision

    @property
    def raw(self) -> int:
        return self.decision.recommendations[-1].replicas


class AutoscalerLoop:
    """What the operator's daemon does each interval, minus Kubernetes: observe, decide, adopt."""

    def __init__(self, client: PrometheusClient, current: int) -> None:
        self.client = client
        self.current = current
        self.history: tuple[Recommendation, ...] = (Recommendation(time.monotonic(), current),)
        self.rounds: list[Round] = []

    async def step(self) -> Round:
        try:
            observation = await self.client.observe(SETTINGS, NAMESPACE, DEPLOYMENT)
        except PrometheusError as error:
            observation = Observation.unavailable(str(error))
        now = time.monotonic()
        decision = decide(observation, self.current, SPEC, self.history, now)
        self.current, self.history = decision.replicas, decision.recommendations
        self.rounds.append(Round(now, observation, decision))
        return self.rounds[-1]

    async def until(self, direction: str, timeout: float) -> Round:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            current = await self.step()
            if current.decision.direction == direction:
                return current
            await asyncio.sleep(ROUND_SECONDS)
        pytest.fail(f"no scale {direction} within {timeout}s; last rounds:\n{self.describe()}")

    def describe(self) -> str:
        return "\n".join(f"{r.time:.1f} raw {r.raw}: {r.decision.reason}" for r in self.rounds[-40:])


async def test_load_scales_up_idle_scales_down_after_the_window_and_a_dead_prometheus_holds(
    start_prometheus, workers, load
):
    prometheus = start_prometheus()
    prometheus.set_targets(WORKER_JOB, worker_targets(workers))
    prometheus.wait_for_workers(2)

    async with PrometheusClient(prometheus.url, SETTINGS.timeout_seconds) as client:
        loop = AutoscalerLoop(client, current=2)
        idle = await loop.step()
        assert idle.observation.kv_cache_usage is not None and idle.decision.active

        clients = load(clients_per_worker=4)
        up = await loop.until("up", timeout=45)
        clients.stop()
        assert up.observation.waiting_per_replica > SPEC.target_queue_length * 1.1
        assert up.decision.reason.startswith("queue ") and " > target 1.00 → 2→" in up.decision.reason
        peak = up.decision.replicas
        assert peak > 2

        down = await loop.until("down", timeout=60)
        after_up = [r for r in loop.rounds if r.time > up.time]
        # Down to X only once every recommendation above X is older than the window.
        last_high = max(r.time for r in loop.rounds if r.raw > down.decision.replicas and r.decision.active)
        assert down.time - last_high >= WINDOW_SECONDS, loop.describe()
        held = [r for r in after_up if r.raw < r.decision.current and r.decision.direction == "none"]
        assert held, "the low recommendations before the scale-down must have been held back"
        assert "scale-down stabilization" in held[0].decision.reason

        prometheus.stop()
        before = loop.current
        dead = await loop.step()
        assert (dead.decision.replicas, dead.decision.active) == (before, False)
        assert dead.decision.condition_reason == PROMETHEUS_UNAVAILABLE
        assert "unreachable" in dead.decision.reason and dead.decision.reason.endswith(f"holding at {before}")


async def test_a_refused_query_is_a_clear_error(prometheus):
    async with PrometheusClient(prometheus.url) as client:
        with pytest.raises(PrometheusError, match=r"refused 'sum\(': bad_data"):
            await client.query("sum(")


async def test_no_samples_for_another_deployment(prometheus):
    async with PrometheusClient(prometheus.url) as client:
        observation = await client.observe(QuerySettings(), NAMESPACE, "nobody")
    assert observation == Observation(None, None)


def test_requests_held_at_the_router_join_the_waiting_signal(prometheus, workers):
    """A router pod's held-requests gauge, scraped as the router job scrapes router pods, is added to
    the idle workers' (empty) queues and shared over both of them."""
    registry = prometheus_client.CollectorRegistry()
    held = prometheus_client.Gauge("mili_router_held_requests", "held", registry=registry)
    held.set(6)
    port = free_port()
    server, thread = prometheus_client.start_http_server(port, addr="127.0.0.1", registry=registry)
    prometheus.set_targets(
        ROUTER_JOB,
        [pod_target(f"127.0.0.1:{port}", f"{DEPLOYMENT}-router", app="mili-router", port_name="metrics")],
    )

    def observe() -> Observation:
        async def once() -> Observation:
            async with PrometheusClient(prometheus.url) as client:
                return await client.observe(SETTINGS, NAMESPACE, DEPLOYMENT)

        return asyncio.run(once())

    try:
        seen = wait_until(
            lambda: (o := observe()).held_requests == 6 and o, "the held gauge in Prometheus", timeout=30
        )
        assert seen.waiting_per_replica == pytest.approx(6 / len(workers), abs=0.5)
    finally:
        prometheus.set_targets(ROUTER_JOB, [])
        server.shutdown()
        thread.join(timeout=10)


def test_relabeling_keeps_ready_workers_with_the_autoscaler_labels(prometheus, workers):
    targets = prometheus.api("targets")
    active = {
        t["labels"]["pod"]: t["labels"] for t in targets["activeTargets"] if t["scrapePool"] == WORKER_JOB
    }
    assert set(active) == {"chat-0", "chat-1"}
    assert active["chat-0"] == {
        "instance": workers[0].address,
        "job": WORKER_JOB,
        "namespace": NAMESPACE,
        "mili_deployment": DEPLOYMENT,
        "pod": "chat-0",
    }
    dropped = {t["discoveredLabels"]["__meta_kubernetes_pod_name"] for t in targets["droppedTargets"]}
    assert {"chat-starting", "someone-else"} <= dropped


def test_shipped_prometheus_config_passes_promtool(tmp_path):
    promtool = require_binary("promtool")
    checked = subprocess.run(
        [promtool, "check", "config", str(SHIPPED_CONFIG)], capture_output=True, text=True
    )
    output = checked.stdout + checked.stderr
    if checked.returncode != 0 and "field kubernetes_sd_configs not found" in output:
        # Debian's promtool is built without Kubernetes discovery: check everything else (globals,
        # jobs, relabel rules) with file discovery in its place, as the loopback tests run it.
        derived = tmp_path / "prometheus.yml"
        derived.write_text(yaml.safe_dump(loopback_config(tmp_path, interval="15s")))
        checked = subprocess.run([promtool, "check", "config", str(derived)], capture_output=True, text=True)
        output = checked.stdout + checked.stderr
    assert checked.returncode == 0, output
    for job in yaml.safe_load(SHIPPED_CONFIG.read_text())["scrape_configs"]:
        assert [sd["role"] for sd in job["kubernetes_sd_configs"]] == ["pod"]


def test_scrape_config_reads_the_pod_label_the_operator_sets():
    from mili.operator.rendering import DEPLOYMENT_LABEL

    meta = "__meta_kubernetes_pod_label_" + "".join(c if c.isalnum() else "_" for c in DEPLOYMENT_LABEL)
    (workers_job,) = [
        j for j in yaml.safe_load(SHIPPED_CONFIG.read_text())["scrape_configs"] if j["job_name"] == WORKER_JOB
    ]
    assert {"source_labels": [meta], "target_label": "mili_deployment"} in workers_job["relabel_configs"]
