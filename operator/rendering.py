"""Pure functions: a validated MiliDeployment spec -> the worker Deployment and Service it should have.

Nothing here talks to Kubernetes; owner references are added by the caller (``kopf.adopt``).
"""

from __future__ import annotations

from typing import Any

from mili.common import settings
from mili.operator.quantity import format_bytes, parse_quantity
from mili.operator.spec import MiliDeploymentSpec, ModelSource

WORKER_PORT = 8000
CONTAINER_NAME = "worker"
CACHE_DIR = "/var/cache/mili"
PVC_MOUNT = "/models"
HOME_DIR = "/home/mili"
WORKER_UID = 1000
# The root filesystem is read-only; these are the writable places besides the model cache.
SCRATCH_VOLUMES = (("tmp", "/tmp", "1Gi"), ("home", HOME_DIR, "1Gi"))

# Draining (docs/operator.md "Draining"): on deletion the pod first waits PRESTOP_SECONDS in its preStop
# hook while Services and routers drop it from their endpoints, then gets SIGTERM (its /ready turns 503)
# and has spec.engine.shutdownTimeoutSeconds to finish in-flight requests; the grace period covers both.
PRESTOP_SECONDS = 10
GRACE_MARGIN_SECONDS = 5

# The pod label Prometheus relabels to `mili_deployment` (issue 7's scrape config relies on it).
DEPLOYMENT_LABEL = "mili.dev/deployment"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "mili-operator"
GPU_RESOURCE = "nvidia.com/gpu"
# Pods that may reach the workers (render_network_policy): a MiliDeployment's router pods carry
# COMPONENT_LABEL=router and DEPLOYMENT_LABEL=NAME; Prometheus pods carry PROMETHEUS_LABELS.
COMPONENT_LABEL = "app.kubernetes.io/component"
ROUTER_COMPONENT = "router"
PROMETHEUS_LABELS = {"app.kubernetes.io/name": "prometheus"}

# With spec.router.policy kv_aware each worker publishes its KV-cache events on the first port and
# answers replay requests on the second (worker/kv_events.py); its router subscribes to every ready
# worker's publisher and asks for a replay when it missed batches (mili.operator.router).
KV_AWARE_POLICY = "kv_aware"
KV_EVENTS_PORT = 5557
KV_EVENTS_PORT_NAME = "kv-events"
KV_REPLAY_PORT = 5558
KV_REPLAY_PORT_NAME = "kv-replay"

# Worker startup covers a model download and a warm-up: allow up to 30 minutes before liveness applies.
STARTUP_PERIOD_SECONDS = 10
STARTUP_FAILURE_THRESHOLD = 180


def selector_labels(name: str) -> dict[str, str]:
    """Labels that select one MiliDeployment's worker pods (immutable once the Deployment exists)."""
    return {"app.kubernetes.io/name": "mili-worker", DEPLOYMENT_LABEL: name}


def router_selector_labels(name: str) -> dict[str, str]:
    """Labels that select one MiliDeployment's router pods (mili.operator.router renders them)."""
    return {
        "app.kubernetes.io/name": "mili-router",
        DEPLOYMENT_LABEL: name,
        COMPONENT_LABEL: ROUTER_COMPONENT,
    }


def selector_string(name: str) -> str:
    """The same selector in the string form of the scale subresource's ``.status.selector``."""
    return ",".join(f"{key}={value}" for key, value in selector_labels(name).items())


def worker_labels(name: str) -> dict[str, str]:
    return {
        **selector_labels(name),
        "app.kubernetes.io/instance": name,
        COMPONENT_LABEL: "worker",
        MANAGED_BY_LABEL: MANAGED_BY,
    }


def endpoint_url(name: str, namespace: str, port: int) -> str:
    """In-cluster base URL of the OpenAI-compatible API (what `openai.OpenAI(base_url=...)` takes)."""
    return f"http://{name}.{namespace}.svc:{port}/v1"


def worker_model_argument(source: ModelSource) -> str:
    """What `mili serve --model` gets: a pvc:// source becomes the path where the claim is mounted."""
    if source.scheme == "pvc":
        return f"file://{PVC_MOUNT}/{source.location}".rstrip("/")
    return source.uri


def publishes_kv_events(spec: MiliDeploymentSpec) -> bool:
    """Whether the workers publish KV-cache events: only for a router whose policy consumes them."""
    return spec.router.enabled and spec.router.policy == KV_AWARE_POLICY


def kv_events_address(host: str) -> str:
    """The workers' KV-event publisher as a ZMQ address: ``*`` (bind, in the pod) or a pod IP."""
    return f"tcp://{host}:{KV_EVENTS_PORT}"


def kv_replay_address(host: str) -> str:
    """The workers' KV-event replay socket as a ZMQ address: ``*`` (bind, in the pod) or a pod IP."""
    return f"tcp://{host}:{KV_REPLAY_PORT}"


def worker_args(spec: MiliDeploymentSpec) -> list[str]:
    """Arguments of `mili serve`: one flag per declared setting the spec holds (mili.common.settings),
    and the KV-event publisher and its replay socket when the router's policy is kv_aware."""
    args = ["serve", "--host", "0.0.0.0", "--port", str(WORKER_PORT)]
    for setting in settings.worker_settings():
        section = spec.model if setting.crd_section == "model" else spec.engine
        value = getattr(section, setting.spec_attribute)
        if setting.name == "model":
            value = worker_model_argument(value)
        args += setting.flag_arguments(value)
    if publishes_kv_events(spec):
        args += settings.BY_NAME["kv_events_endpoint"].flag_arguments(kv_events_address("*"))
        args += settings.BY_NAME["kv_events_replay_endpoint"].flag_arguments(kv_replay_address("*"))
    return args


def worker_ports(spec: MiliDeploymentSpec) -> list[dict[str, Any]]:
    ports = [{"name": "http", "containerPort": WORKER_PORT, "protocol": "TCP"}]
    if publishes_kv_events(spec):
        for name, number in ((KV_EVENTS_PORT_NAME, KV_EVENTS_PORT), (KV_REPLAY_PORT_NAME, KV_REPLAY_PORT)):
            ports.append({"name": name, "containerPort": number, "protocol": "TCP"})
    return ports


def termination_grace_period_seconds(spec: MiliDeploymentSpec) -> int:
    """preStop wait + the worker's shutdown timeout + a margin, so the kubelet never SIGKILLs a drain."""
    return PRESTOP_SECONDS + spec.engine.shutdown_timeout_seconds + GRACE_MARGIN_SECONDS


def _env(spec: MiliDeploymentSpec) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "MILI_CACHE_DIR", "value": CACHE_DIR},
        {"name": "HF_HOME", "value": f"{CACHE_DIR}/huggingface"},
        {"name": "HOME", "value": HOME_DIR},
    ]
    if spec.api_key_secret_ref is not None:
        ref = spec.api_key_secret_ref
        env.append(
            {"name": "MILI_API_KEY", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
        )
    return env


def _resources(spec: MiliDeploymentSpec) -> dict[str, Any]:
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if spec.resources.cpu is not None:
        requests["cpu"] = spec.resources.cpu  # no CPU limit: throttling a decode loop costs latency
    if spec.resources.memory is not None:
        requests["memory"] = limits["memory"] = spec.resources.memory
    requests["ephemeral-storage"] = ephemeral_storage(spec)
    if spec.resources.gpus > 0:
        limits[GPU_RESOURCE] = str(spec.resources.gpus)
    return {key: value for key, value in (("requests", requests), ("limits", limits)) if value}


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def ephemeral_storage(spec: MiliDeploymentSpec) -> str:
    """The pod's ephemeral-storage request: the sizeLimits of its emptyDirs, model cache included."""
    sizes = [spec.resources.model_cache, *(size for _, _, size in SCRATCH_VOLUMES)]
    return format_bytes(sum(parse_quantity(size) or 0 for size in sizes))


def _volumes(spec: MiliDeploymentSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every emptyDir has a sizeLimit: a full disk evicts this pod, not its neighbours."""
    scratch = [("model-cache", CACHE_DIR, spec.resources.model_cache), *SCRATCH_VOLUMES]
    volumes: list[dict[str, Any]] = [
        {"name": name, "emptyDir": {"sizeLimit": size}} for name, _, size in scratch
    ]
    mounts: list[dict[str, Any]] = [{"name": name, "mountPath": path} for name, path, _ in scratch]
    source = spec.model.source
    if source.scheme == "pvc":
        volumes.append(
            {"name": "model", "persistentVolumeClaim": {"claimName": source.claim, "readOnly": True}}
        )
        mounts.append({"name": "model", "mountPath": PVC_MOUNT, "readOnly": True})
    return volumes, mounts


def render_pod_template(spec: MiliDeploymentSpec, default_image: str) -> dict[str, Any]:
    """The worker pod template: one `mili serve` container with probes, volumes and a non-root context."""
    volumes, mounts = _volumes(spec)
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.image or default_image,
        "command": ["mili"],
        "args": worker_args(spec),
        "ports": worker_ports(spec),
        "env": _env(spec),
        "resources": _resources(spec),
        "volumeMounts": mounts,
        "startupProbe": _probe("/health", STARTUP_PERIOD_SECONDS, STARTUP_FAILURE_THRESHOLD),
        "livenessProbe": _probe("/health", 10, 3),
        "readinessProbe": _probe("/ready", 5, 3),
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SECONDS)]}}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if spec.image_pull_policy is not None:
        container["imagePullPolicy"] = spec.image_pull_policy
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": volumes,
        # Service links would put e.g. MILI_PORT=tcp://... into the env of a pod next to a Service named
        # `mili`, which collides with the worker's own MILI_* settings.
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,  # workers never talk to the API server
        "terminationGracePeriodSeconds": termination_grace_period_seconds(spec),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": WORKER_UID,
            "runAsGroup": WORKER_UID,
            "fsGroup": WORKER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in spec.tolerations]
    return {
        "metadata": {
            "labels": worker_labels(spec.name),
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(WORKER_PORT),
                "prometheus.io/path": "/metrics",
                "mili.dev/model-source": spec.model.source.uri,
            },
        },
        "spec": pod_spec,
    }


def render_deployment(
    spec: MiliDeploymentSpec, namespace: str, replicas: int | None, default_image: str
) -> dict[str, Any]:
    """The worker Deployment. ``replicas=None`` leaves ``spec.replicas`` out (the autoscaler owns it)."""
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector_labels(spec.name)},
        # One pod at a time is replaced in place: a rollout never needs a spare GPU (docs/operator.md).
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
        "template": render_pod_template(spec, default_image),
    }
    if replicas is not None:
        deployment_spec["replicas"] = replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": spec.name, "namespace": namespace, "labels": worker_labels(spec.name)},
        "spec": deployment_spec,
    }


def render_service(spec: MiliDeploymentSpec, namespace: str) -> dict[str, Any]:
    """The Service clients use (port ``service.port`` -> the pods' `http` port): in front of the router
    pods, or of the worker pods themselves when ``spec.router.enabled`` is false."""
    selector = router_selector_labels(spec.name) if spec.router.enabled else selector_labels(spec.name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": spec.name, "namespace": namespace, "labels": worker_labels(spec.name)},
        "spec": {
            "type": spec.service.type,
            "selector": selector,
            "ports": [{"name": "http", "port": spec.service.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def workers_take_client_traffic(spec: MiliDeploymentSpec) -> bool:
    """Whether clients reach the workers directly: true while the Service named after the
    MiliDeployment selects the workers (no router in front of them)."""
    return not spec.router.enabled


def render_network_policy(
    spec: MiliDeploymentSpec, namespace: str, operator_namespace: str
) -> dict[str, Any]:
    """Ingress to the workers' port: from this MiliDeployment's router pods, the operator's namespace
    (the operator, and the shipped Prometheus) and Prometheus pods anywhere; from any client only while
    the workers are the front door themselves (``workers_take_client_traffic``). With kv_aware, the
    router pods also reach the KV-event publishers and their replay sockets."""
    port = [{"protocol": "TCP", "port": "http"}]
    routers = {
        "podSelector": {"matchLabels": {DEPLOYMENT_LABEL: spec.name, COMPONENT_LABEL: ROUTER_COMPONENT}}
    }
    peers = [
        routers,
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": operator_namespace}}},
        {"namespaceSelector": {}, "podSelector": {"matchLabels": dict(PROMETHEUS_LABELS)}},
    ]
    rules: list[dict[str, Any]] = [{"from": peers, "ports": port}]
    if publishes_kv_events(spec):
        kv_ports = [{"protocol": "TCP", "port": name} for name in (KV_EVENTS_PORT_NAME, KV_REPLAY_PORT_NAME)]
        rules.append({"from": [routers], "ports": kv_ports})
    if workers_take_client_traffic(spec):
        rules.append({"ports": port})  # no `from`: any source, as the Service's clients need
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": spec.name, "namespace": namespace, "labels": worker_labels(spec.name)},
        "spec": {
            "podSelector": {"matchLabels": selector_labels(spec.name)},
            "policyTypes": ["Ingress"],
            "ingress": rules,
        },
    }
