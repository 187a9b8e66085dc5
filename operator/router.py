"""Pure functions: a validated MiliDeployment spec -> the vllm-router in front of its workers.

The router (vllm-project/router, `vllm-router`) finds the worker pods itself through the Kubernetes API
(``--service-discovery``), so it gets a ServiceAccount and a Role that may get, list and watch pods in
its namespace, and nothing else. With ``kv_aware`` it cannot: vllm-router 0.1.17 subscribes to the KV
events of statically listed workers only (``--worker-urls`` + ``--kv-event-source``), so the operator
lists the ready worker pods itself (``ready_worker_ips``) and renders them into the arguments; a change
of that set rolls the router. Each router pod has two containers from the one router image: the
gateway (``mili.gateway``, the pod's `http` port, which the Service targets) holds requests while no
worker is ready (scale from zero) and forwards everything to the router beside it on ``ROUTER_PORT``.
The Service named after the MiliDeployment selects the router pods; ``<name>-workers`` (headless) names
the worker pods. See docs/routing.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mili.operator.rendering import (
    KV_AWARE_POLICY,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    WORKER_PORT,
    kv_events_address,
    kv_replay_address,
    router_selector_labels,
    selector_labels,
    worker_labels,
)
from mili.operator.spec import MiliDeploymentSpec

GATEWAY_PORT = 8000  # the pod's `http` port: clients (through the Service) reach the gateway
GATEWAY_METRICS_PORT = 29001
ROUTER_PORT = 8001  # vllm-router, reached by the gateway over the pod's loopback
ROUTER_METRICS_PORT = 29000
ROUTER_UID = 1000
CONTAINER_NAME = "router"
GATEWAY_CONTAINER_NAME = "gateway"
API_KEY_ENV = "MILI_API_KEY"
QUEUE_SIZE = 256  # requests the router holds while its concurrency limit is reached
MAX_HELD_REQUESTS = 256  # requests the gateway holds while no worker is ready; beyond them 503


def router_name(name: str) -> str:
    """The router Deployment, its ServiceAccount, Role and RoleBinding."""
    return f"{name}-router"


def workers_service_name(name: str) -> str:
    return f"{name}-workers"


def router_labels(name: str) -> dict[str, str]:
    return {**router_selector_labels(name), "app.kubernetes.io/instance": name, MANAGED_BY_LABEL: MANAGED_BY}


def ready_worker_ips(pods: Iterable[Mapping[str, Any]], name: str) -> list[str]:
    """The pod IPs of this MiliDeployment's worker pods that are Ready and not being deleted, sorted (so
    the router's arguments change only when the set does)."""
    wanted = selector_labels(name).items()
    ips = set()
    for pod in pods:
        metadata, status = pod.get("metadata") or {}, pod.get("status") or {}
        labels = metadata.get("labels") or {}
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
        )
        if (
            wanted <= labels.items()
            and ready
            and status.get("podIP")
            and not metadata.get("deletionTimestamp")
        ):
            ips.add(status["podIP"])
    return sorted(ips)


def worker_source_args(spec: MiliDeploymentSpec, namespace: str, kv_workers: Sequence[str]) -> list[str]:
    """How the router knows the workers: service discovery, or for kv_aware the ready pods' addresses
    with their KV-event publishers and replay sockets (block size and model name as the workers use
    them). A new router (a rolled or restarted one) asks each worker's replay socket for the batches it
    missed when the first live batch arrives, so its index starts from what the workers hold."""
    if spec.router.policy != KV_AWARE_POLICY:
        selector = [f"{key}={value}" for key, value in selector_labels(spec.name).items()]
        return [
            "--service-discovery",
            "--selector", *selector,
            "--service-discovery-port", str(WORKER_PORT),
            "--service-discovery-namespace", namespace,
        ]  # fmt: skip
    urls = [f"http://{ip}:{WORKER_PORT}" for ip in kv_workers]
    args = ["--worker-urls", *urls] if urls else []
    for url, ip in zip(urls, kv_workers, strict=True):
        args += ["--kv-event-source", f"{url}={kv_events_address(ip)}"]
        args += ["--kv-event-replay-source", f"{url}={kv_replay_address(ip)}"]
    return [
        *args,
        "--kv-event-block-size", str(spec.engine.block_size),
        "--kv-event-model", spec.model.served_name,
    ]  # fmt: skip


def router_args(spec: MiliDeploymentSpec, namespace: str, kv_workers: Sequence[str] = ()) -> list[str]:
    """Arguments of `vllm-router`: find this MiliDeployment's ready worker pods, route by the policy,
    export metrics; retries and circuit breaking stay at the router's defaults (on). ``kv_workers``:
    the ready worker pods' IPs, used with kv_aware only."""
    args = [
        "--host", "0.0.0.0",  # the kubelet probes it on the pod's address
        "--port", str(ROUTER_PORT),
        "--policy", spec.router.policy,
        *worker_source_args(spec, namespace, kv_workers),
        "--health-check-endpoint", "/ready",  # a draining worker answers 503 there and gets no new requests
        "--prometheus-host", "0.0.0.0",
        "--prometheus-port", str(ROUTER_METRICS_PORT),
        "--queue-size", str(QUEUE_SIZE),
        # A held request may wait as long as a cold start from zero replicas may take.
        "--queue-timeout-secs", str(spec.autoscaling.cold_start_timeout_seconds),
    ]  # fmt: skip
    if spec.api_key_secret_ref is not None:
        args += ["--api-key", f"$({API_KEY_ENV})"]  # the kubelet expands $(VAR) from the container's env
    return args


def gateway_args(spec: MiliDeploymentSpec) -> list[str]:
    """Arguments of `mili-gateway`: in front of the router beside it, holding OpenAI API requests while
    the router has no ready worker for as long as a cold start may take."""
    return [
        "--host", "0.0.0.0",
        "--port", str(GATEWAY_PORT),
        "--router-url", f"http://127.0.0.1:{ROUTER_PORT}",
        "--hold-timeout", str(spec.autoscaling.cold_start_timeout_seconds),
        "--max-held-requests", str(MAX_HELD_REQUESTS),
        "--metrics-host", "0.0.0.0",
        "--metrics-port", str(GATEWAY_METRICS_PORT),
    ]  # fmt: skip


def _probe(path: str, port: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def render_gateway_container(spec: MiliDeploymentSpec, image: str) -> dict[str, Any]:
    """The pod's front door: `mili-gateway` on the `http` port the Service targets."""
    return {
        "name": GATEWAY_CONTAINER_NAME,
        "image": image,
        "command": ["mili-gateway"],
        "args": gateway_args(spec),
        "ports": [
            {"name": "http", "containerPort": GATEWAY_PORT, "protocol": "TCP"},
            {"name": "gateway-metrics", "containerPort": GATEWAY_METRICS_PORT, "protocol": "TCP"},
        ],
        "livenessProbe": _probe("/gateway/health", "http", 10, 3),
        # /health passes through to the router's, which answers while it runs, also with no worker
        # yet: a request then waits in the gateway (scale from zero) instead of finding no endpoint.
        "readinessProbe": _probe("/health", "http", 5, 3),
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "securityContext": _container_security(),
    }


def render_router_container(
    spec: MiliDeploymentSpec, namespace: str, image: str, kv_workers: Sequence[str] = ()
) -> dict[str, Any]:
    """`vllm-router` on ``ROUTER_PORT``, behind the gateway (``kv_workers``: see ``router_args``)."""
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": image,
        "command": ["vllm-router"],
        "args": router_args(spec, namespace, kv_workers),
        "ports": [
            {"name": "router", "containerPort": ROUTER_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": ROUTER_METRICS_PORT, "protocol": "TCP"},
        ],
        "livenessProbe": _probe("/health", "router", 10, 3),
        "readinessProbe": _probe("/health", "router", 5, 3),
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}},
        "securityContext": _container_security(),
    }
    if spec.api_key_secret_ref is not None:
        ref = spec.api_key_secret_ref
        container["env"] = [
            {"name": API_KEY_ENV, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
        ]
    return container


def render_router_deployment(
    spec: MiliDeploymentSpec, namespace: str, image: str, kv_workers: Sequence[str] = ()
) -> dict[str, Any]:
    """The router Deployment: ``spec.router.replicas`` pods of the gateway and `vllm-router`, non-root,
    read-only root."""
    pod_spec: dict[str, Any] = {
        "serviceAccountName": router_name(spec.name),
        "containers": [
            render_gateway_container(spec, image),
            render_router_container(spec, namespace, image, kv_workers),
        ],
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": ROUTER_UID,
            "runAsGroup": ROUTER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": router_name(spec.name),
            "namespace": namespace,
            "labels": router_labels(spec.name),
        },
        "spec": {
            "replicas": spec.router.replicas,
            "selector": {"matchLabels": router_selector_labels(spec.name)},
            "template": {
                "metadata": {
                    "labels": router_labels(spec.name),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(ROUTER_METRICS_PORT),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": pod_spec,
            },
        },
    }


def render_service_account(spec: MiliDeploymentSpec, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": router_name(spec.name),
            "namespace": namespace,
            "labels": router_labels(spec.name),
        },
    }


def render_role(spec: MiliDeploymentSpec, namespace: str) -> dict[str, Any]:
    """What service discovery needs: read the pods of this namespace (the selector is the router's)."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {
            "name": router_name(spec.name),
            "namespace": namespace,
            "labels": router_labels(spec.name),
        },
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}],
    }


def render_role_binding(spec: MiliDeploymentSpec, namespace: str) -> dict[str, Any]:
    name = router_name(spec.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": namespace, "labels": router_labels(spec.name)},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
    }


def render_workers_service(spec: MiliDeploymentSpec, namespace: str) -> dict[str, Any]:
    """``<name>-workers``: a headless Service naming every worker pod (DNS per pod; no load balancing)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": workers_service_name(spec.name),
            "namespace": namespace,
            "labels": worker_labels(spec.name),
        },
        "spec": {
            "clusterIP": "None",
            "selector": selector_labels(spec.name),
            "ports": [{"name": "http", "port": WORKER_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }
