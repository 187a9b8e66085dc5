"""The e2e suite's cluster: local mode (default, runs in CI) or kind mode (`MILI_E2E_MODE=kind`).

- local: kmock's emulator as the API server, the real `mili-operator` process, the pod runner playing the
  kubelet with real `mili serve` processes, and a real Prometheus (tests/e2e/harness/).
- kind: the current kubeconfig context, made and installed by scripts/e2e-kind.sh (`make e2e`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from e2e.harness.cluster import E2ECluster
from mili_testing import require_binary

MODES = ("local", "kind")
# Local mode: Prometheus scrapes every second, so the autoscaler may average over 10 s, not a minute.
LOCAL_OPERATOR_ENV = {"MILI_AUTOSCALING_WINDOW": "10s"}


def e2e_mode() -> str:
    mode = os.environ.get("MILI_E2E_MODE", "local")
    if mode not in MODES:
        raise pytest.UsageError(f"MILI_E2E_MODE={mode!r}: expected one of {MODES}")
    return mode


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A cluster with MILI installed (CRD, operator, Prometheus), torn down after the session."""
    require_binary("kubectl")
    if e2e_mode() == "kind":
        from e2e.harness.kind_cluster import KindCluster

        kind = KindCluster(os.environ.get("MILI_E2E_NAMESPACE", "mili-e2e"))
        kind.start()
        yield kind
        kind.stop()
        return
    require_binary("prometheus")
    from e2e.harness.local_cluster import LocalCluster

    local = LocalCluster(tmp_path_factory.mktemp("e2e"), operator_env=LOCAL_OPERATOR_ENV)
    try:
        local.start()
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="session")
def e2e(cluster: E2ECluster) -> E2ECluster:
    """The cluster, typed by the interface the scenarios use."""
    return cluster
