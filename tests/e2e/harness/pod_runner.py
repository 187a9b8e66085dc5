"""A small kubelet (plus the garbage collector) for the local e2e mode.

It watches the worker Deployments the operator writes into the emulated API server and runs each
replica's container command and args as a local process, the way a node would run the pod:

- one process per replica, on its own loopback port (the container's `--port`/`--host` rewritten);
  scale-up starts processes, scale-down stops the newest, a changed pod template replaces them all;
- readiness from the container's readiness probe path (`/ready`), reported back by patching the
  Deployment's status (`replicas`, `readyReplicas`, `updatedReplicas`, `availableReplicas`);
- environment from the container spec (`value` and `secretKeyRef`), volume paths mapped to per-pod
  directories (an `emptyDir` starts with the node's model cache linked in, like the worker image's
  baked-in builtin model);
- Prometheus targets written for file-based discovery, the ready pods only, with the labels the shipped
  relabeling (manifests/prometheus/prometheus.yml) gives: `namespace`, `mili_deployment`, `pod`;
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
POLL_SECONDS = 0.25


@dataclass
class Pod:
    """One replica: a local process playing the pod's only container."""

    name: str
    deployment: str
    template_hash: str
    port: int
    command: list[str]
    env: dict[str, str]
    log_path: Path
    labels: dict[str, str]
    process: subprocess.Popen[bytes] = field(init=False)
    ready: bool = False
    restarts: int = 0

    def spawn(self) -> None:
        """Start (or restart) the container's process."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def template_hash(template: dict[str, Any]) -> str:
    """Like the `pod-template-hash` label: a short digest of the pod template."""
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def rewrite_args(args: list[str], port: int) -> list[str]:
    """The container's args with `--port` set to ``port`` and `--host` to loopback."""
    rewritten = list(args)
    for flag, value in (("--port", str(port)), ("--host", "127.0.0.1")):
        if flag in rewritten:
            rewritten[rewritten.index(flag) + 1] = value
        else:
            rewritten += [flag, value]
    return rewritten


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
        allocate_port: Callable[[], int],
    ) -> None:
        self.http = httpx.Client(base_url=api_url, timeout=10)
        self.namespace = namespace
        self.workdir = workdir
        self.targets_file = targets_file
        self.node_cache = node_cache
        self.bin_dir = bin_dir
        self.allocate_port = allocate_port
        self.pods: dict[str, list[Pod]] = {}  # by Deployment name, oldest first
        self.stopped_pods: list[Pod] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pod-runner", daemon=True)
        self._published_targets: list[tuple[str, dict[str, str]]] | None = None

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

    def logs(self, limit: int = 3000) -> str:
        """The tail of every pod's log (for failure messages)."""
        with self._lock:
            pods = [pod for pods in self.pods.values() for pod in pods] + self.stopped_pods
        return "\n".join(
            f"--- pod {pod.name} (port {pod.port}, restarts {pod.restarts}):\n"
            + pod.log_path.read_text(errors="replace")[-limit:]
            for pod in pods
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
            for name in set(self.pods) - set(live):  # Deployment deleted: its pods go
                for pod in self.pods.pop(name):
                    self._stop_pod(pod)
        for name, deployment in live.items():
            self._sync_deployment(name, deployment)
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
        (container,) = template["spec"]["containers"]
        name = f"{deployment}-{digest[:8]}-{uuid.uuid4().hex[:5]}"
        pod_dir = self.workdir / name
        pod_dir.mkdir(parents=True)
        mounts = self._volume_dirs(template, container, pod_dir)
        port = self.allocate_port()
        executable, *rest = container.get("command") or ["mili"]
        resolved = shutil.which(executable, path=f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
        command = [resolved or executable, *rest, *rewrite_args(container.get("args") or [], port)]
        env = {**os.environ, **self._container_env(container, mounts)}
        labels = dict((template.get("metadata") or {}).get("labels") or {})
        pod = Pod(name, deployment, digest, port, command, env, pod_dir / "container.log", labels)
        pod.spawn()
        logger.info("started pod %s on port %d", name, port)
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
        """Restart a dead container (restartPolicy Always); otherwise run its readiness probe."""
        if pod.process.poll() is not None:
            logger.warning("pod %s exited with %s; restarting", pod.name, pod.process.returncode)
            pod.ready = False
            pod.restarts += 1
            pod.spawn()
            return
        (container,) = template["spec"]["containers"]
        probe = (container.get("readinessProbe") or {}).get("httpGet") or {"path": "/ready"}
        pod.ready = answers_ok(f"{pod.url}{probe['path']}", timeout=1)

    def _stop_pod(self, pod: Pod) -> None:
        """SIGTERM, then SIGKILL after the grace period (like a pod deletion)."""
        stop_process(pod.process, grace=30)
        pod.ready = False
        self.stopped_pods.append(pod)
        logger.info("stopped pod %s", pod.name)

    def _publish_targets(self) -> None:
        with self._lock:
            targets = [
                (
                    f"127.0.0.1:{pod.port}",
                    {
                        "namespace": self.namespace,
                        "mili_deployment": pod.labels.get(DEPLOYMENT_LABEL, pod.deployment),
                        "pod": pod.name,
                    },
                )
                for pods in self.pods.values()
                for pod in pods
                if pod.ready  # the shipped relabeling keeps ready pods only
            ]
        if targets != self._published_targets:
            write_targets(self.targets_file, targets)
            self._published_targets = targets
