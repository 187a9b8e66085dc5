"""The reconciler's per-object queue: triggers that arrive while a pass waits to start share that pass."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from integration.operator.conftest import NAMESPACE, Api, EmulatedCluster, api_refusal

from mili.operator.config import OperatorConfig
from mili.operator.kube import ApiError, KubeClient
from mili.operator.reconcile import Notice, Reconciler


def reconcile_at_once(cluster: EmulatedCluster, name: str, calls: int) -> list[Any]:
    """Start ``calls`` reconciles of one object together (as the children listed at start-up do)."""
    posted: list[Notice] = []

    async def run() -> list[Any]:
        kube = KubeClient(cluster.url)
        reconciler = Reconciler(kube, OperatorConfig(), post_event=lambda _, notice: posted.append(notice))
        try:
            triggers = [reconciler.reconcile(NAMESPACE, name, f"child {n}") for n in range(calls)]
            return await asyncio.gather(*triggers, return_exceptions=True)
        finally:
            await kube.aclose()

    return asyncio.run(run())


def test_nine_triggers_at_once_cost_two_passes(api: Api, cluster: EmulatedCluster):
    api.create_milideployment("queued", {"resources": {"gpus": 0}})
    parent = api.md_path("queued")
    before = cluster.requests("GET", parent)

    outcomes = reconcile_at_once(cluster, "queued", calls=9)

    # The first runs at once; the other eight queue behind it as one pass that reads afresh.
    assert cluster.requests("GET", parent) - before == 2
    assert not [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    assert api.get(api.service_path("queued")) is not None
    assert Notice("Normal", "Created", "Created Deployment queued") in outcomes[0]
    assert not [n for n in outcomes[1] if n.reason in ("Created", "Updated")], "the second pass found it done"
    assert all(outcome == outcomes[1] for outcome in outcomes[2:]), "joiners share the queued pass"


def test_an_error_in_the_shared_pass_reaches_every_caller(api: Api, cluster: EmulatedCluster):
    api.create_milideployment("failing", {"resources": {"gpus": 0}})
    parent = api.md_path("failing")

    async def refuse_the_parent(request: Any) -> Any:
        if str(request.method.value).upper() == "GET" and request.url.path == parent:
            return api_refusal(503, "ServiceUnavailable", "etcd is down")
        return None

    cluster.intercept(refuse_the_parent)
    outcomes = reconcile_at_once(cluster, "failing", calls=4)

    assert len(outcomes) == 4
    for outcome in outcomes:
        assert isinstance(outcome, ApiError) and outcome.status == 503, outcome


@pytest.fixture(autouse=True)
def no_interceptors(cluster: EmulatedCluster):
    yield
    assert cluster.emulator is not None
    emulator = cluster.emulator
    cluster.on_loop(emulator.interceptors.clear)
