"""The real operator process, honest about errors: a setting the worker would refuse, a child the API
server refuses, and no writes when nothing changed."""

from __future__ import annotations

import time
from typing import Any

from integration.operator.conftest import NAMESPACE, api_refusal
from integration.operator.test_operator import condition, container, events_about

# How long to watch for a retry that must not come (the handlers' first backoff is 2 s).
QUIET_SECONDS = 6.0


def settled_count(cluster, method: str, path: str, wait_for) -> int:
    """The number of ``method`` requests to ``path`` once it stopped moving for a second."""
    seen = [(cluster.requests(method, path), time.monotonic())]

    def settled() -> bool:
        count = cluster.requests(method, path)
        if count != seen[-1][0]:
            seen.append((count, time.monotonic()))
        return time.monotonic() - seen[-1][1] >= 1.0

    wait_for(settled, f"{method} {path} to settle")
    return seen[-1][0]


def degraded(api, name: str) -> dict[str, Any] | None:
    found = condition(api.get(api.md_path(name)), "Degraded")
    return found if found.get("status") == "True" else None


def test_a_block_size_the_worker_refuses_is_degraded_naming_the_field(api, operator, wait_for):
    api.create_milideployment("blocks", {"resources": {"gpus": 0}, "engine": {"blockSize": 24}})

    found = wait_for(lambda: degraded(api, "blocks"), "Degraded=True")
    assert found["reason"] == "InvalidSpec"
    assert found["message"] == "spec.engine.blockSize: must be one of 8, 16, 32, 64, 128, got 24"
    assert api.get(api.deployment_path("blocks")) is None, "no crash-looping pod"


def test_a_child_the_api_server_refuses_is_degraded_with_its_message_and_not_retried(
    api, cluster, operator, wait_for
):
    message = (
        'Deployment.apps "refused" is invalid: spec.template.spec.nodeSelector: Invalid value: "bad key!": '
        "name part must consist of alphanumeric characters"
    )

    async def validate(request: Any) -> Any:
        body = request.data if isinstance(request.data, dict) else {}
        selector = ((body.get("spec") or {}).get("template") or {}).get("spec", {}).get("nodeSelector") or {}
        if str(request.method.value) == "POST" and "bad key!" in selector:
            return api_refusal(422, "Invalid", message)
        return None

    cluster.intercept(validate)
    api.create_milideployment("refused", {"resources": {"gpus": 0}, "nodeSelector": {"bad key!": "x"}})

    found = wait_for(lambda: degraded(api, "refused"), "Degraded=True")
    assert found["reason"] == "ChildRejected"
    assert found["message"] == f"the API server refused Deployment refused: {message}"
    # Each trigger (the creation, the Service and NetworkPolicy appearing) re-runs the level-based pass
    # once; once those settled, nothing may come back on its own.
    posts = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments"
    tries = settled_count(cluster, "POST", posts, wait_for)
    time.sleep(QUIET_SECONDS)  # a retry loop (even with backoff) would POST again within this window
    assert cluster.requests("POST", posts) == tries, "a refusal is not retried"
    assert len(events_about(api, "refused", "ChildRejected")) == 1
    assert not events_about(api, "refused", "ReconcileFailed")

    api.patch_spec("refused", {"nodeSelector": None})  # fixed: applied, and Degraded clears
    wait_for(lambda: api.get(api.deployment_path("refused")), "the Deployment once the spec is fixed")
    wait_for(
        lambda: condition(api.get(api.md_path("refused")), "Degraded").get("status") == "False",
        "Degraded=False",
    )


def test_a_child_event_sends_no_patch_when_only_quantity_spelling_changed(api, cluster, operator, wait_for):
    api.create_milideployment("canonical", {"resources": {"gpus": 0, "cpu": "1000m", "memory": "1024Mi"}})
    path = api.deployment_path("canonical")
    deployment = wait_for(lambda: api.get(path), "the worker Deployment")
    wait_for(lambda: condition(api.get(api.md_path("canonical")), "Degraded"), "the first status")

    # What a real API server stores: canonical quantities.
    worker = container(deployment)
    worker["resources"]["requests"].update({"cpu": "1", "memory": "1Gi"})
    worker["resources"]["limits"]["memory"] = "1Gi"
    log_start = len(operator.log())
    patches_before = cluster.requests("PATCH", path)
    api.patch(path, {"spec": {"template": {"spec": {"containers": [worker]}}}})

    wait_for(
        lambda: "Reconciled mili-test/canonical after Deployment MODIFIED" in operator.log()[log_start:],
        "the reconcile the child event triggers",
    )
    assert cluster.requests("PATCH", path) == patches_before + 1, "the operator rewrote an unchanged child"
    assert container(api.get(path))["resources"]["requests"]["cpu"] == "1"
