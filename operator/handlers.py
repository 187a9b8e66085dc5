"""Kopf handlers for MiliDeployments and their children. Thin: each one runs the shared reconcile pass."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from mili.operator import metrics
from mili.operator.kube import ApiError, KubeClient
from mili.operator.reconcile import Notice, Reconciler, post_kopf_event
from mili.operator.rendering import DEPLOYMENT_LABEL, MANAGED_BY, MANAGED_BY_LABEL
from mili.operator.spec import GROUP, KIND, PLURAL, VERSION

RETRY_BASE_SECONDS = 2
RETRY_MAX_SECONDS = 120
CHILDREN = {MANAGED_BY_LABEL: MANAGED_BY}


@kopf.on.startup()
async def connect(memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """Open the API client the reconciler uses (Kopf's own connection is internal to Kopf)."""
    memo.kube = KubeClient.from_environment()
    memo.reconciler = Reconciler(memo.kube, memo.config)
    logger.info("MILI operator started; default worker image %s", memo.config.worker_image)


@kopf.on.cleanup()
async def disconnect(memo: kopf.Memo, **_: Any) -> None:
    kube = getattr(memo, "kube", None)
    if kube is not None:
        await kube.aclose()


def retry_delay(retry: int) -> float:
    """Backoff before the next try of a failed reconcile: 2, 4, 8, ... seconds, at most two minutes."""
    return float(min(RETRY_BASE_SECONDS * 2**retry, RETRY_MAX_SECONDS))


async def run_reconcile(
    memo: kopf.Memo, body: Any, namespace: str, name: str, trigger: str, retry: int | None
) -> None:
    """Reconcile. An API error (unreachable, 409, 5xx: refusals become Degraded inside) is counted and,
    for the MiliDeployment's own handlers (``retry`` is Kopf's count), retried with backoff; one Warning
    Event per run of failures, not one per try."""
    try:
        await memo.reconciler.reconcile(namespace, name, trigger)
    except ApiError as error:
        metrics.RECONCILE_ERRORS.inc()
        if retry is None:
            logging.getLogger(__name__).warning("reconcile of %s/%s failed: %s", namespace, name, error)
            return
        if retry == 0:
            post_kopf_event(body, Notice("Warning", "ReconcileFailed", str(error)))
        raise kopf.TemporaryError(
            f"reconcile of {namespace}/{name} failed (try {retry + 1}): {error}", delay=retry_delay(retry)
        ) from error


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
async def milideployment_changed(
    body: kopf.Body, reason: str, namespace: str, name: str, memo: kopf.Memo, retry: int, **_: Any
) -> None:
    """Apply the worker Deployment, Service and NetworkPolicy and refresh the status."""
    await run_reconcile(memo, body, namespace, name, trigger=str(reason), retry=retry)


def owner_name(body: kopf.Body) -> str | None:
    """Name of the MiliDeployment that controls this child, if any."""
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == KIND and ref.get("apiVersion", "").startswith(f"{GROUP}/"):
            return ref.get("name")
    return None


@kopf.on.event("apps", "v1", "deployments", labels=CHILDREN)
@kopf.on.event("v1", "services", labels=CHILDREN)
@kopf.on.event("networking.k8s.io", "v1", "networkpolicies", labels=CHILDREN)
async def child_changed(body: kopf.Body, type: str | None, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    """A child was listed, added, changed or deleted: re-apply its parent (recreating a deleted child)
    and refresh the parent's status from it."""
    parent = owner_name(body)
    if parent is not None and hasattr(memo, "reconciler"):
        trigger = f"{body.get('kind', 'child')} {type or 'LISTED'}"
        await run_reconcile(memo, body, namespace, parent, trigger=trigger, retry=None)


@kopf.on.event("v1", "pods", labels={"app.kubernetes.io/name": "mili-worker", DEPLOYMENT_LABEL: kopf.PRESENT})
async def worker_pod_changed(
    body: kopf.Body, type: str | None, namespace: str, memo: kopf.Memo, **_: Any
) -> None:
    """A worker pod came, went or changed readiness: a kv_aware router is told the ready pods by its
    arguments (mili.operator.router), so its MiliDeployment is reconciled (a no-op for other policies)."""
    parent = (body.get("metadata", {}).get("labels") or {}).get(DEPLOYMENT_LABEL)
    if parent and hasattr(memo, "reconciler"):
        await run_reconcile(memo, body, namespace, parent, trigger=f"Pod {type or 'LISTED'}", retry=None)


@kopf.on.event(GROUP, VERSION, PLURAL)
def milideployment_event(type: str | None, namespace: str, name: str, **_: Any) -> None:
    """Forget the metric series of a deleted MiliDeployment (children go by owner-reference GC)."""
    if type == "DELETED":
        metrics.forget(namespace, name)
