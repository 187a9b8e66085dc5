"""The real `mili-operator` (kmock's emulated API server) autoscaling on a real Prometheus that scrapes
real workers: the daemon patches the Deployment's replicas and writes status, history and Events."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from integration.autoscaling.loopback import DEPLOYMENT, NAMESPACE, OPERATOR_JOB, free_port, pod_target
from integration.operator.conftest import Api, OperatorProcess, wait_for

OPERATOR_ENVIRONMENT = {"MILI_AUTOSCALING_WINDOW": "4s", "MILI_PROMETHEUS_TIMEOUT": "2"}


DEAD_PROMETHEUS_URL = f"http://127.0.0.1:{free_port()}"  # nothing listens there


@pytest.fixture(scope="module")
def operator(cluster, prometheus, tmp_path_factory) -> Iterator[OperatorProcess]:
    """The operator, with short query windows, its own metrics scraped by the shared Prometheus."""
    workdir = tmp_path_factory.mktemp("operator")
    process = OperatorProcess(cluster.write_kubeconfig(workdir / "kubeconfig"), workdir / "operator.log")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in OPERATOR_ENVIRONMENT.items():
            patch.setenv(name, value)
        # The allow-list the specs' prometheusUrl must be in: the real Prometheus and a dead address.
        patch.setenv("MILI_PROMETHEUS_URL", f"{prometheus.url},{DEAD_PROMETHEUS_URL}")
        process.start()
    address = f"127.0.0.1:{process.metrics_port}"
    prometheus.set_targets(
        OPERATOR_JOB,
        [
            pod_target(
                address, "mili-operator-0", namespace="mili-system", app="mili-operator", port_name="metrics"
            )
        ],
    )
    yield process
    process.stop()


def autoscaling_spec(prometheus_url: str, **overrides: Any) -> dict[str, Any]:
    return {
        "resources": {"gpus": 0},
        "autoscaling": {
            "enabled": True,
            "minReplicas": 1,
            "maxReplicas": 3,
            "targetQueueLength": 1,
            "intervalSeconds": 1,
            "scaleDownStabilizationSeconds": 0,
            "prometheusUrl": prometheus_url,
            **overrides,
        },
    }


def replicas(api: Api, name: str) -> int | None:
    deployment = api.get(api.deployment_path(name))
    return deployment["spec"].get("replicas") if deployment else None


def status(api: Api, name: str) -> dict[str, Any]:
    return (api.get(api.md_path(name)) or {}).get("status") or {}


def scaling_active(api: Api, name: str) -> dict[str, Any]:
    return next((c for c in status(api, name).get("conditions") or [] if c["type"] == "ScalingActive"), {})


def events(api: Api, name: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in api.events() if e["involvedObject"]["name"] == name and e["reason"] == reason]


def test_load_scales_the_deployment_up_and_idle_brings_it_back_down(api, operator, prometheus, load):
    api.create_milideployment(DEPLOYMENT, autoscaling_spec(prometheus.url))
    wait_for(lambda: replicas(api, DEPLOYMENT) == 1, "the Deployment at minReplicas")
    wait_for(
        lambda: scaling_active(api, DEPLOYMENT).get("status") == "True", "ScalingActive=True", timeout=20
    )
    idle = status(api, DEPLOYMENT)
    # The one-minute average may still hold the workers' warm-up, so idle usage is near 0, not exactly 0.
    assert "→ stays at 1" in idle["autoscaling"]["lastDecision"]["reason"]
    assert idle["autoscaling"]["kvCacheUsage"] < 0.1 and idle["desiredReplicas"] == 1

    clients = load(clients_per_worker=4)
    wait_for(lambda: replicas(api, DEPLOYMENT) == 3, "a scale-up to maxReplicas under load", timeout=45)
    scaled = status(api, DEPLOYMENT)  # read under load: idle could scale it down at any moment
    assert scaled["desiredReplicas"] == 3
    ups = scaled["autoscaling"]["history"]
    assert ups and all(entry["to"] > entry["from"] and entry["reason"].startswith("queue ") for entry in ups)
    assert ups[-1]["to"] == 3 and f"→ {ups[-1]['from']}→3" in ups[-1]["reason"]
    assert scaled["autoscaling"]["lastScaleTime"] == ups[-1]["time"]
    scaled_up = wait_for(lambda: events(api, DEPLOYMENT, "ScaledUp"), "a ScaledUp Event")
    assert {e["message"] for e in scaled_up} <= {entry["reason"] for entry in ups}, "each Event says why"
    assert any(e["message"] == ups[-1]["reason"] for e in scaled_up)
    clients.stop()

    wait_for(lambda: replicas(api, DEPLOYMENT) == 1, "a scale-down once idle", timeout=45)
    down = status(api, DEPLOYMENT)["autoscaling"]["history"][-1]
    assert (down["from"], down["to"]) in {(3, 1), (3, 2), (2, 1)} and " < target " in down["reason"]
    wait_for(lambda: events(api, DEPLOYMENT, "ScaledDown"), "a ScaledDown Event")
    assert len(status(api, DEPLOYMENT)["autoscaling"]["history"]) <= 5

    metrics = operator.metrics()
    assert 'mili_operator_scale_decisions_total{direction="up"}' in metrics
    assert (
        f'mili_operator_desired_replicas{{mili_deployment="{DEPLOYMENT}",namespace="{NAMESPACE}"}} 1.0'
        in metrics
    )


def test_an_unreachable_prometheus_holds_replicas_and_says_why(api, operator):
    dead_url = DEAD_PROMETHEUS_URL
    api.create_milideployment("offline", autoscaling_spec(dead_url, minReplicas=2))
    condition = wait_for(
        lambda: scaling_active(api, "offline").get("status") == "False" and scaling_active(api, "offline"),
        "ScalingActive=False",
        timeout=20,
    )
    assert condition["reason"] == "PrometheusUnavailable" and dead_url in condition["message"]
    assert condition["message"].endswith("holding at 2")
    (warning,) = wait_for(lambda: events(api, "offline", "PrometheusUnavailable"), "a Warning Event")
    assert warning["type"] == "Warning"
    assert replicas(api, "offline") == 2
    assert "history" not in status(api, "offline").get("autoscaling", {})
