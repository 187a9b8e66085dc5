"""Local mode: kmock's emulator as the API server, the real operator, the pod runner, a real Prometheus.

The emulator and the operator process come from the operator's integration harness
(tests/integration/operator/conftest.py), loaded by path so both suites drive the same code.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import socket
import sys
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx

from e2e.harness.cluster import ROOT
from e2e.harness.pod_runner import PodRunner
from e2e.harness.prometheus_server import PrometheusServer, write_targets
from mili.operator.router import router_name
from mili.worker.builtin_models import ensure_builtin_model
from mili.worker.model_source import cache_root

OPERATOR_HARNESS = ROOT / "tests" / "integration" / "operator" / "conftest.py"
FIRST_POD_ADDRESS = os.environ.get("MILI_E2E_FIRST_POD_ADDRESS", "127.0.0.2")
POD_PORTS = (8000, 8001, 29000, 29001)  # workers', gateways', routers' and their metrics ports


class PodAddresses:
    """A fresh loopback address per pod (127.0.0.2, 127.0.0.3, ...), skipping any where one of the
    pods' ports is taken already (another program on this machine)."""

    def __init__(self, first: str = FIRST_POD_ADDRESS) -> None:
        self._next = ipaddress.IPv4Address(first)

    def allocate(self) -> str:
        while True:
            address, self._next = str(self._next), self._next + 1
            if not address.startswith("127."):
                raise RuntimeError("no free loopback address left for a pod")
            if all(_bindable(address, port) for port in POD_PORTS):
                return address


def _bindable(address: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


def operator_harness() -> ModuleType:
    """The operator integration suite's emulator/operator helpers as a module."""
    name = "mili_e2e_operator_harness"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, OPERATOR_HARNESS)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


class LocalCluster:
    """Everything on loopback; pods are processes started by the pod runner, each on its own address."""

    mode = "local"

    def __init__(self, workdir: Path, operator_env: dict[str, str] | None = None) -> None:
        self.harness = operator_harness()
        self.namespace: str = self.harness.NAMESPACE
        self.workdir = workdir
        self.operator_env = operator_env or {}
        self.emulated = self.harness.EmulatedCluster()
        self.prometheus = PrometheusServer(self._dir("prometheus"), self.harness.free_port())
        self.api: Any = None
        self.operator: Any = None
        self.runner: PodRunner | None = None

    def _dir(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def start(self) -> None:
        # The node's model cache: converted once, like the builtin model baked into the worker image.
        ensure_builtin_model("smollm2-135m-instruct")
        self.prometheus.start()
        self.emulated.start()
        self.api = self.harness.Api(self.emulated.url)
        kubeconfig = self.emulated.write_kubeconfig(self._dir("operator") / "kubeconfig")
        self.operator = self.harness.OperatorProcess(kubeconfig, self._dir("operator") / "operator.log")
        # The operator reads its settings from MILI_* variables too; the harness passes os.environ on.
        settings = {"MILI_PROMETHEUS_URL": self.prometheus.url, **self.operator_env}
        saved = {key: os.environ.get(key) for key in settings}
        os.environ.update(settings)
        try:
            self.operator.start()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        write_targets(
            self.prometheus.operator_targets_file,
            [(f"127.0.0.1:{self.operator.metrics_port}", {"pod": "mili-operator"})],
        )
        self.runner = PodRunner(
            api_url=self.emulated.url,
            namespace=self.namespace,
            workdir=self._dir("pods"),
            targets_file=self.prometheus.targets_file,
            node_cache=cache_root(),
            bin_dir=Path(sys.executable).parent,
            allocate_address=PodAddresses().allocate,
            router_targets_file=self.prometheus.router_targets_file,
        )
        self.runner.start()

    def stop(self) -> None:
        if self.runner is not None:
            self.runner.stop()
        if self.operator is not None:
            self.operator.stop()
        if self.api is not None:
            self.api.http.close()
        self.emulated.stop()
        self.prometheus.stop()

    # --- E2ECluster -------------------------------------------------------------------------------

    def _path(self, kind: str, name: str) -> str:
        paths = {
            "MiliDeployment": self.api.md_path,
            "Deployment": self.api.deployment_path,
            "Service": self.api.service_path,
        }
        return paths[kind](name)

    def apply(self, manifest: dict[str, Any]) -> None:
        body = {**manifest, "metadata": {**manifest["metadata"], "namespace": self.namespace}}
        # The emulator assigns none of these; Kopf and owner references need them.
        body["metadata"].update(uid=str(uuid.uuid4()), resourceVersion="1", generation=1)
        plural = {"MiliDeployment": "milideployments"}.get(body["kind"])
        path = (
            self.api.md_path() if plural else f"/api/v1/namespaces/{self.namespace}/{body['kind'].lower()}s"
        )
        self.api.http.post(path, json=body).raise_for_status()

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        return self.api.get(self._path(kind, name))

    def patch_spec(self, name: str, spec_patch: dict[str, Any]) -> None:
        self.api.patch_spec(name, spec_patch)

    def delete(self, name: str) -> None:
        self.api.delete(self.api.md_path(name))

    def ready_worker_urls(self, name: str) -> dict[str, str]:
        assert self.runner is not None
        return {pod.name: pod.url for pod in self.runner.ready_pods(name)}

    def worker_pods(self, name: str) -> list[str]:
        assert self.runner is not None
        return [pod.name for pod in self.runner.all_pods(name)]

    def router_url(self, name: str) -> str | None:
        assert self.runner is not None
        ready = self.runner.ready_pods(router_name(name))
        return ready[0].url if ready else None

    def kill_worker(self, name: str, pod: str) -> None:
        assert self.runner is not None
        self.runner.kill(pod)

    def prometheus_query(self, expr: str) -> list[dict[str, Any]]:
        return self.prometheus.query(expr)

    def capacity_patch(self) -> dict[str, Any]:
        return {}

    def diagnostics(self) -> str:
        parts = []
        if self.operator is not None:
            parts.append("--- operator log:\n" + self.operator.log()[-6000:])
        if self.runner is not None:
            parts.append(f"--- pod runner errors: {self.runner.errors[-5:]}")
            parts.append(self.runner.logs())
        try:
            targets = httpx.get(f"{self.prometheus.url}/api/v1/targets", timeout=2).json()
            health = [(t["labels"].get("pod"), t["health"]) for t in targets["data"]["activeTargets"]]
            parts.append(f"--- prometheus targets: {health}")
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            parts.append(f"--- prometheus targets unavailable: {exc!r}")
        return "\n".join(parts)
