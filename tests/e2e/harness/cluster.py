"""What the e2e scenarios need from a cluster, whichever mode provides it, and shared helpers."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import yaml

from mili_testing import wait_until

ROOT = Path(__file__).resolve().parents[3]
T = TypeVar("T")


class E2ECluster(Protocol):
    """A cluster with the CRD, the operator and Prometheus installed, seen from the test process."""

    mode: str
    namespace: str

    def apply(self, manifest: dict[str, Any]) -> None:
        """Create (or update) one object in ``namespace``, like `kubectl apply`."""

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        """`MiliDeployment`, `Deployment` or `Service` by name; None when it does not exist."""

    def patch_spec(self, name: str, spec_patch: dict[str, Any]) -> None:
        """Merge-patch a MiliDeployment's spec (bumping its generation, as the API server would)."""

    def delete(self, name: str) -> None:
        """Delete a MiliDeployment (without waiting for its children)."""

    def ready_worker_urls(self, name: str) -> dict[str, str]:
        """Ready worker pods of a MiliDeployment: pod name -> base URL reachable from the test."""

    def worker_pods(self, name: str) -> list[str]:
        """Every worker pod of a MiliDeployment (ready or not)."""

    def router_url(self, name: str) -> str | None:
        """Base URL of the MiliDeployment's Service (its router pods' gateway) reachable from the test;
        None while no router pod is ready."""

    def kill_worker(self, name: str, pod: str) -> None:
        """Kill one worker pod's container at once (no drain), as a crash would."""

    def prometheus_query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query against the Prometheus the operator's autoscaler reads."""

    def capacity_patch(self) -> dict[str, Any]:
        """Spec changes a second replica needs to fit the cluster (kind nodes are small)."""

    def diagnostics(self) -> str:
        """Logs worth showing when a scenario fails."""


def wait_for(condition: Callable[[], T], what: str, timeout: float, diagnostics: Callable[[], str]) -> T:
    """Poll ``condition`` until it returns something truthy; fail with ``diagnostics()`` after ``timeout``."""
    return wait_until(condition, what, timeout, interval=0.25, diagnostics=diagnostics)


def kustomize(path: Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize PATH` renders (what `kubectl apply -k` would send)."""
    built = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    if built.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {path} failed: {built.stderr}")
    return [doc for doc in yaml.safe_load_all(built.stdout) if doc]


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    """One status condition of an object ({} when absent)."""
    for item in ((obj or {}).get("status") or {}).get("conditions") or []:
        if item.get("type") == kind:
            return item
    return {}
