"""Kind mode: a real cluster (scripts/e2e-kind.sh made it and installed MILI), driven with kubectl.

Workers, a MiliDeployment's Service (its router pods) and Prometheus are reached through
`kubectl port-forward` on 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import httpx
import yaml

from mili.operator.rendering import router_selector_labels, selector_labels
from mili_testing import stop_process

SYSTEM_NAMESPACE = "mili-system"
PROMETHEUS_SERVICE = "svc/prometheus"
WORKER_PORT = 8000
_FORWARDING = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+)")


class PortForward:
    """`kubectl port-forward TARGET :PORT` on loopback; ``url`` once it listens."""

    def __init__(self, namespace: str, target: str, port: int) -> None:
        self.process = subprocess.Popen(
            ["kubectl", "-n", namespace, "port-forward", "--address", "127.0.0.1", target, f":{port}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # blocks until kubectl says where it listens (or exits)
        match = _FORWARDING.search(line)
        if match is None:
            self.stop()
            raise RuntimeError(f"kubectl port-forward {target} failed: {line.strip()}")
        self.url = f"http://127.0.0.1:{match.group(1)}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        stop_process(self.process, grace=10)


class KindCluster:
    """The E2ECluster interface over kubectl against the current kubeconfig context."""

    mode = "kind"

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._forwards: dict[str, PortForward] = {}
        self._prometheus: PortForward | None = None

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["kubectl", "-n", self.namespace, *args], input=stdin, capture_output=True, text=True, timeout=120
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {result.stderr}")
        return result

    def start(self) -> None:
        self.kubectl("create", "namespace", self.namespace, check=False)
        self.kubectl(
            "wait",
            "--for=condition=Available",
            "--timeout=300s",
            "deployment/mili-operator",
            "-n",
            SYSTEM_NAMESPACE,
        )

    def stop(self) -> None:
        for forward in [*self._forwards.values(), self._prometheus]:
            if forward is not None:
                forward.stop()
        self.kubectl("delete", "namespace", self.namespace, "--wait=false", check=False)

    # --- E2ECluster -------------------------------------------------------------------------------

    def apply(self, manifest: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(manifest))

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        result = self.kubectl("get", kind.lower(), name, "-o", "json", check=False)
        if result.returncode != 0:
            if "NotFound" in result.stderr:
                return None
            raise RuntimeError(f"kubectl get {kind} {name} failed: {result.stderr}")
        return json.loads(result.stdout)

    def patch_spec(self, name: str, spec_patch: dict[str, Any]) -> None:
        self.kubectl(
            "patch", "milideployment", name, "--type", "merge", "-p", json.dumps({"spec": spec_patch})
        )

    def delete(self, name: str) -> None:
        self.kubectl("delete", "milideployment", name, "--wait=false")

    def _pods(self, labels: dict[str, str]) -> list[dict[str, Any]]:
        selector = ",".join(f"{key}={value}" for key, value in labels.items())
        result = self.kubectl("get", "pods", "-l", selector, "-o", "json")
        return [
            pod for pod in json.loads(result.stdout)["items"] if not pod["metadata"].get("deletionTimestamp")
        ]

    def _ready_pods(self, labels: dict[str, str]) -> list[str]:
        return [
            pod["metadata"]["name"]
            for pod in self._pods(labels)
            if any(
                c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or []
            )
        ]

    def worker_pods(self, name: str) -> list[str]:
        return [pod["metadata"]["name"] for pod in self._pods(selector_labels(name))]

    def ready_worker_urls(self, name: str) -> dict[str, str]:
        ready = self._ready_pods(selector_labels(name))
        for pod in {key for key in self._forwards if not key.startswith("svc/")} - set(ready):
            self._forwards.pop(pod).stop()
        for pod in ready:
            if pod not in self._forwards or not self._forwards[pod].alive():
                self._forwards[pod] = PortForward(self.namespace, f"pod/{pod}", WORKER_PORT)
        return {pod: self._forwards[pod].url for pod in ready}

    def router_url(self, name: str) -> str | None:
        if not self._ready_pods(router_selector_labels(name)):
            return None
        service = f"svc/{name}"
        if service not in self._forwards or not self._forwards[service].alive():
            self._forwards[service] = PortForward(self.namespace, service, WORKER_PORT)
        return self._forwards[service].url

    def kill_worker(self, name: str, pod: str) -> None:
        # No grace: the kubelet kills the container at once, the ReplicaSet starts a new pod.
        self.kubectl("delete", "pod", pod, "--grace-period=0", "--force", "--wait=false")

    def prometheus_query(self, expr: str) -> list[dict[str, Any]]:
        if self._prometheus is None or not self._prometheus.alive():
            self._prometheus = PortForward(SYSTEM_NAMESPACE, PROMETHEUS_SERVICE, 9090)
        response = httpx.get(f"{self._prometheus.url}/api/v1/query", params={"query": expr}, timeout=10)
        response.raise_for_status()
        return response.json()["data"]["result"]

    def capacity_patch(self) -> dict[str, Any]:
        # The sample requests 2 CPUs per worker; a second replica must fit a laptop-sized kind node.
        return {"resources": {"cpu": "250m"}}

    def diagnostics(self) -> str:
        parts = [self.kubectl("get", "all,events", "-o", "wide", check=False).stdout[-4000:]]
        for app in ("mili-worker", "mili-router"):
            logs = self.kubectl(
                "logs", "-l", f"app.kubernetes.io/name={app}", "--all-containers", "--tail=50", check=False
            )
            parts.append(f"--- {app} logs:\n" + logs.stdout[-4000:])
        operator = subprocess.run(
            ["kubectl", "-n", SYSTEM_NAMESPACE, "logs", "deployment/mili-operator", "--tail=80"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        parts.append("--- operator log:\n" + operator.stdout[-6000:])
        return "\n".join(parts)
