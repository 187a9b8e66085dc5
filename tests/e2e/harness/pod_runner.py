"""A small kubelet (plus the garbage collector) for the local e2e mode.

It watches the Deployments the operator writes into the emulated API server (workers and routers) and
runs each replica's containers, their command and args, as local processes, the way a node would:

- each pod on its own loopback address (127.0.0.2, 127.0.0.3, ...; all of 127.0.0.0/8 is local on
  Linux), so every worker listens on port 8000 as in a cluster; in the args, `0.0.0.0` and `127.0.0.1`
  (the pod's own network namespace) become that address, and nothing else changes;
- scale-up starts pods, scale-down stops the newest, a changed pod template replaces them all;
- readiness from every container's readiness probe (path and port, by name or number), reported back by
  patching the Deployment's status (`replicas`, `readyReplicas`, `updatedReplicas`, `availableReplicas`);
- the router's `--service-discovery` is played by the pod runner, the one adaptation the emulator
  forces (it ignores label selectors, so the router would see every pod): the discovery flags are
  taken out and the ready pods matching the router's `--selector` are registered through the router's
  worker API (`/add_worker`, `/remove_worker`), as its discovery does when pods turn ready or go;
- environment from the container spec (`value` and `secretKeyRef`), volume paths mapped to per-pod
  directories (an `emptyDir` starts with the node's model cache linked in, like the worker image's
  baked-in builtin model);
- Prometheus targets written for file-based discovery, the ready pods only, with the labels the shipped
  relabeling (manifests/prometheus/prometheus.yml) gives: `namespace`, `mili_deployment`, `pod`
  (workers: the `http` port; routers: the `metrics` and `gateway-metrics` ports);
- owner references honoured like Kubernetes' garbage collector: a Deployment or Service whose owning
  MiliDeployment is gone is deleted (and its pods stopped).

Everything it reads and writes goes through the API server's HTTP interface, like a real kubelet.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from e2e.harness.prometheus_server import write_targets
from mili_testing import answers_ok, stop_process

logger = logging.getLogger(__name__)

MANAGED_BY = ("app.kubernetes.io/managed-by", "mili-operator")
DEPLOYMENT_LABEL = "mili.dev/deployment"
APP_LABEL = "app.kubernetes.io/name"
POLL_SECONDS = 0.25
# What a container's args mean by "this pod": whole addresses only (127.0.0.1 is not in 127.0.0.10).
POD_LOCAL_ADDRESS = re.compile(r"(?<![\d.])(?:0\.0\.0\.0|127\.0\.0\.1)(?![\d])")
DISCOVERY_FLAGS = ("--service-discovery-port", "--service-discovery-namespace")
# Ports each Prometheus job keeps, by the pod's app label (the shipped relabeling's `keep` rules).
SCRAPED_PORTS = {"mili-worker": ("http",), "mili-router": ("metrics", "gateway-metrics")}


@dataclass
class Container:
    """One container of a pod: a local process."""

    name: str
    command: list[str]
    env: dict[str, str]
    log_path: Path
    probe_url: str | None  # the readiness probe, resolved to this pod's address
    process: subprocess.Popen[bytes] = field(init=False)
    restarts: int = 0

    def spawn(self) -> None:
        """Start (or restart) the container's process."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )


@dataclass
class Discovery:
    """The router's service discovery, played by the pod runner: register ready pods matching
    ``selector`` on ``port`` through the router's worker API at ``api_url``."""

    selector: dict[str, str]
    port: int
    api_url: str
    registered: set[str] = field(default_factory=set)


@dataclass
class Pod:
    """One replica: its own loopback address, one process per container."""

    name: str
    deployment: str
    template_hash: str
    address: str
    http_port: int
    containers: list[Container]
    labels: dict[str, str]
    ports: dict[str, int]  # every container port, by name
    discovery: Discovery | None = None
    ready: bool = False

    def spawn(self) -> None:
        for container in self.containers:
            container.spawn()

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.http_port}"

    @property
    def restarts(self) -> int:
        return sum(container.restarts for container in self.containers)


def template_hash(template: dict[str, Any]) -> str:
    """Like the `pod-template-hash` label: a short digest of the pod template."""
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def pod_args(args: list[str], address: str) -> list[str]:
    """The container's args as they mean it inside its pod: the pod's own addresses become ``address``."""
    return [POD_LOCAL_ADDRESS.sub(address, arg) for arg in args]


def split_service_discovery(args: list[str]) -> tuple[list[str], dict[str, str] | None, int]:
    """Router args without the discovery flags, the selector they named (None without
    ``--service-discovery``) and the workers' port."""
    if "--service-discovery" not in args:
        return args, None, 0
    kept, selector, port, index = [], {}, 80, 0
    while index < len(args):
        arg = args[index]
        if arg == "--selector":
            index += 1
            while index < len(args) and not args[index].startswith("--"):
                key, _, value = args[index].partition("=")
                selector[key] = value
                index += 1
            continue
        if arg in DISCOVERY_FLAGS:
            if arg == "--service-discovery-port":
                port = int(args[index + 1])
            index += 2
            continue
        if arg != "--service-discovery":
            kept.append(arg)
        index += 1
    return kept, selector, port


def flag_value(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


def probe_url(container: dict[str, Any], address: str) -> str | None:
    """The container's readiness probe (an httpGet; port by name or number) at ``address``."""
    probe = (container.get("readinessProbe") or {}).get("httpGet")
    if probe is None:
        return None
    port = probe.get("port", 80)
    if isinstance(port, str) and not port.isdigit():
        port = next(p["containerPort"] for p in container.get("ports") or [] if p.get("name") == port)
    return f"http://{address}:{port}{probe.get('path', '/')}"


def matches(labels: dict[str, str], selector: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


class PodRunner:
    """Runs the worker pods of every mili-operator Deployment in one namespace of the emulated cluster."""

    def __init__(
        self,
        api_url: str,
        namespace: str,
        workdir: Path,
        targets_file: Path,
        node_cache: Path,
        bin_dir: Path,
        allocate_address: Callable[[], str],
        router_targets_file: Path,
    ) -> None:
        self.http = httpx.Client(base_url=api_url, timeout=10)
        self.namespace = namespace
        self.workdir = workdir
        self.targets_file = targets_file
        self.node_cache = node_cache
        self.bin_dir = bin_dir
        self.allocate_address = allocate_address
        self.router_targets_file = router_targets_file
        self.pods: dict[str, list[Pod]] = {}  # by Deployment name, oldest first
        self.stopped_pods: list[Pod] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pod-runner", daemon=True)
        self._published_targets: dict[Path, list[tuple[str, dict[str, str]]]] = {}

    # --- public -----------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        with self._lock:
            for pods in self.pods.values():
                for pod in pods:
                    self._stop_pod(pod)
            self.pods.clear()
        self.http.close()

    def ready_pods(self, deployment: str) -> list[Pod]:
        with self._lock:
            return [pod for pod in self.pods.get(deployment, []) if pod.ready]

    def all_pods(self, deployment: str) -> list[Pod]:
        with self._lock:
            return list(self.pods.get(deployment, []))

    def kill(self, pod_name: str) -> None:
        """SIGKILL every container of a pod (a crash: no drain); it is restarted like any exited one."""
        with self._lock:
            (pod,) = [pod for pods in self.pods.values() for pod in pods if pod.name == pod_name]
            for container in pod.containers:
                container.process.kill()

    def logs(self, limit: int = 3000) -> str:
        """The tail of every pod's log (for failure messages)."""
        with self._lock:
            pods = [pod for pods in self.pods.values() for pod in pods] + self.stopped_pods
        return "\n".join(
            f"--- pod {pod.name} container {container.name} ({pod.address}, restarts {container.restarts}):\n"
            + container.log_path.read_text(errors="replace")[-limit:]
            for pod in pods
            for container in pod.containers
        )

    # --- the loop ---------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._sync()
            except Exception as exc:  # keep playing the kubelet; the tests see the error in `errors`
                logger.exception("pod runner pass failed")
                self.errors.append(repr(exc))
            self._stop.wait(POLL_SECONDS)

    def _list(self, path: str) -> list[dict[str, Any]]:
        response = self.http.get(path)
        response.raise_for_status()
        return response.json().get("items") or []

    def _sync(self) -> None:
        ns = self.namespace
        owners = {
            item["metadata"].get("uid")
            for item in self._list(f"/apis/mili.dev/v1alpha1/namespaces/{ns}/milideployments")
        }
        deployments = self._collect_garbage(f"/apis/apps/v1/namespaces/{ns}/deployments", owners)
        self._collect_garbage(f"/api/v1/namespaces/{ns}/services", owners)
        live = {item["metadata"]["name"]: item for item in deployments}
        with self._lock:
            for name in set(self.pods) - set(live):  # Deployment deleted: its pods go, together
                self._stop_pods(self.pods.pop(name))
        for name, deployment in live.items():
            self._sync_deployment(name, deployment)
        self._discover()
        self._publish_targets()

    def _collect_garbage(self, path: str, owners: set[str | None]) -> list[dict[str, Any]]:
        """Delete our children whose MiliDeployment owner is gone; return the others."""
        kept = []
        for item in self._list(path):
            labels = item["metadata"].get("labels") or {}
            if labels.get(MANAGED_BY[0]) != MANAGED_BY[1]:
                continue
            references = [
                ref
                for ref in item["metadata"].get("ownerReferences") or []
                if ref.get("kind") == "MiliDeployment"
            ]
            if references and not any(ref.get("uid") in owners for ref in references):
                self.http.delete(f"{path}/{item['metadata']['name']}").raise_for_status()
                logger.info("garbage-collected %s/%s", path.rsplit("/", 1)[-1], item["metadata"]["name"])
                continue
            kept.append(item)
        return kept

    def _sync_deployment(self, name: str, deployment: dict[str, Any]) -> None:
        spec = deployment.get("spec") or {}
        desired = spec.get("replicas", 1)
        template = spec.get("template") or {}
        current_hash = template_hash(template)
        with self._lock:
            pods = self.pods.setdefault(name, [])
            for pod in [pod for pod in pods if pod.template_hash != current_hash]:  # Recreate
                pods.remove(pod)
                self._stop_pod(pod)
            while len(pods) > desired:
                self._stop_pod(pods.pop())  # scale-down removes the newest, like a ReplicaSet
            while len(pods) < desired:
                pods.append(self._start_pod(name, template, current_hash))
            for pod in pods:
                self._check(pod, template)
            status = {
                "observedGeneration": (deployment.get("metadata") or {}).get("generation", 1),
                "replicas": len(pods),
                "updatedReplicas": len(pods),
                "readyReplicas": sum(pod.ready for pod in pods),
                "availableReplicas": sum(pod.ready for pod in pods),
            }
        status["conditions"] = [
            {
                "type": "Available",
                "status": "True" if status["availableReplicas"] >= min(desired, 1) else "False",
                "reason": "MinimumReplicasAvailable",
            }
        ]
        live = deployment.get("status") or {}
        if any(live.get(key) != value for key, value in status.items()):  # level-based, like the kubelet
            self.http.patch(
                f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{name}/status",
                json={"status": status},
                headers={"Content-Type": "application/merge-patch+json"},
            ).raise_for_status()

    # --- pods -------------------------------------------------------------------------------------

    def _start_pod(self, deployment: str, template: dict[str, Any], digest: str) -> Pod:
        name = f"{deployment}-{digest[:8]}-{uuid.uuid4().hex[:5]}"
        pod_dir = self.workdir / name
        pod_dir.mkdir(parents=True)
        address = self.allocate_address()
        containers, discovery, ports = [], None, {}
        for spec in template["spec"]["containers"]:
            mounts = self._volume_dirs(template, spec, pod_dir)
            args = pod_args(spec.get("args") or [], address)
            args, selector, worker_port = split_service_discovery(args)
            if selector is not None:
                api_url = f"http://{address}:{flag_value(args, '--port')}"
                discovery = Discovery(selector, worker_port, api_url)
            executable, *rest = spec.get("command") or ["mili"]
            search = f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
            command = [shutil.which(executable, path=search) or executable, *rest, *args]
            env = {**os.environ, **self._container_env(spec, mounts)}
            log_path = pod_dir / f"{spec['name']}.log"
            containers.append(Container(spec["name"], command, env, log_path, probe_url(spec, address)))
            ports.update({port["name"]: port["containerPort"] for port in spec.get("ports") or []})
        labels = dict((template.get("metadata") or {}).get("labels") or {})
        pod = Pod(
            name, deployment, digest, address, ports.get("http", 8000), containers, labels, ports, discovery
        )
        pod.spawn()
        logger.info("started pod %s on %s", name, address)
        return pod

    def _volume_dirs(
        self, template: dict[str, Any], container: dict[str, Any], pod_dir: Path
    ) -> dict[str, Path]:
        """Mount path -> host directory; an emptyDir gets a fresh one seeded with the node's model cache."""
        volumes = {volume["name"]: volume for volume in template["spec"].get("volumes") or []}
        mounts: dict[str, Path] = {}
        for mount in container.get("volumeMounts") or []:
            volume = volumes.get(mount["name"], {})
            host = pod_dir / "volumes" / mount["name"]
            host.mkdir(parents=True, exist_ok=True)
            if "emptyDir" in volume:
                for entry in self.node_cache.iterdir() if self.node_cache.is_dir() else []:
                    if entry.name == "builtin":  # the image's baked-in builtin models
                        (host / entry.name).symlink_to(entry, target_is_directory=True)
            mounts[mount["mountPath"]] = host
        return mounts

    def _container_env(self, container: dict[str, Any], mounts: dict[str, Path]) -> dict[str, str]:
        env: dict[str, str] = {}
        for variable in container.get("env") or []:
            if "value" in variable:
                value = str(variable["value"])
            elif ref := (variable.get("valueFrom") or {}).get("secretKeyRef"):
                value = self._secret_value(ref["name"], ref["key"])
            else:
                continue
            for mount_path, host in mounts.items():  # paths inside the pod -> where they live here
                if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
                    value = str(host) + value[len(mount_path.rstrip("/")) :]
            env[variable["name"]] = value
        return env

    def _secret_value(self, name: str, key: str) -> str:
        response = self.http.get(f"/api/v1/namespaces/{self.namespace}/secrets/{name}")
        response.raise_for_status()
        secret = response.json()
        if key in (secret.get("stringData") or {}):
            return secret["stringData"][key]
        return base64.b64decode(secret["data"][key]).decode()

    def _check(self, pod: Pod, template: dict[str, Any]) -> None:
        """Restart a dead container (restartPolicy Always); the pod is ready when every container's
        readiness probe passes."""
        ready = True
        for container in pod.containers:
            if container.process.poll() is not None:
                logger.warning("pod %s: %s exited with %s; restarting", pod.name, container.name,
                               container.process.returncode)  # fmt: skip
                container.restarts += 1
                container.spawn()
                ready = False
            elif container.probe_url is not None:
                ready = answers_ok(container.probe_url, timeout=1) and ready
        pod.ready = ready

    def _stop_pod(self, pod: Pod) -> None:
        """SIGTERM, then SIGKILL after the grace period (like a pod deletion)."""
        self._stop_pods([pod])

    def _stop_pods(self, pods: list[Pod]) -> None:
        """Stop every container of ``pods`` at once (each gets its own grace period, in parallel)."""
        containers = [container for pod in pods for container in pod.containers]
        for container in containers:
            if container.process.poll() is None:
                container.process.terminate()
        for container in containers:
            stop_process(container.process, grace=30)
        for pod in pods:
            pod.ready = False
            self.stopped_pods.append(pod)
            logger.info("stopped pod %s", pod.name)

    def _discover(self) -> None:
        """Each ready router learns the ready pods its selector matches, and forgets the rest."""
        with self._lock:
            pods = [pod for pods in self.pods.values() for pod in pods]
        for router in pods:
            discovery = router.discovery
            if discovery is None or not router.ready:
                continue
            wanted = {
                f"http://{pod.address}:{discovery.port}"
                for pod in pods
                if pod.ready and matches(pod.labels, discovery.selector)
            }
            for url in sorted(wanted - discovery.registered):
                self._worker_api(discovery, "/add_worker", url)
                discovery.registered.add(url)
            for url in sorted(discovery.registered - wanted):
                self._worker_api(discovery, "/remove_worker", url)
                discovery.registered.discard(url)

    def _worker_api(self, discovery: Discovery, path: str, url: str) -> None:
        answer = httpx.post(f"{discovery.api_url}{path}", params={"url": url}, timeout=30)
        if answer.status_code >= 300:
            raise RuntimeError(
                f"router {discovery.api_url}{path}?url={url}: {answer.status_code} {answer.text}"
            )
        logger.info("router %s: %s %s", discovery.api_url, path, url)

    def _publish_targets(self) -> None:
        with self._lock:
            pods = [pod for pods in self.pods.values() for pod in pods if pod.ready]  # ready pods only
        files = {"mili-worker": self.targets_file, "mili-router": self.router_targets_file}
        for app, path in files.items():
            targets = [
                (
                    f"{pod.address}:{pod.ports[port]}",
                    {
                        "namespace": self.namespace,
                        "mili_deployment": pod.labels.get(DEPLOYMENT_LABEL, pod.deployment),
                        "pod": pod.name,
                    },
                )
                for pod in pods
                if pod.labels.get(APP_LABEL) == app
                for port in SCRAPED_PORTS[app]
                if port in pod.ports
            ]
            if targets != self._published_targets.get(path):
                write_targets(path, targets)
                self._published_targets[path] = targets
