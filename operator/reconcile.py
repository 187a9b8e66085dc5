"""One level-based reconcile pass of a MiliDeployment: read it, apply its children, write its status.

Every trigger (the MiliDeployment created, updated or resumed; a child Deployment or Service changed or
deleted) runs the same pass on a fresh read of the object, serialized per object, so running it again
changes nothing. Triggers that arrive while a pass for the same object waits to start share that pass
(a controller work queue's de-duplication): the nine children of one object, listed at once when the
operator starts, cost one pass after the running one, not nine.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from mili.operator import apply, metrics, rendering, router
from mili.operator.config import OperatorConfig
from mili.operator.kube import (
    ApiError,
    KubeClient,
    deployment_path,
    milideployment_path,
    network_policy_path,
    pod_path,
    role_binding_path,
    role_path,
    service_account_path,
    service_path,
)
from mili.operator.rendering import render_deployment, render_network_policy, render_service, selector_string
from mili.operator.spec import MiliDeploymentSpec, SpecError, check_prometheus_url, parse_spec
from mili.operator.status import ObservedState, compute_status, desired_replicas, status_patch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Notice:
    """An Event to post on the MiliDeployment."""

    type: str  # Normal or Warning
    reason: str
    message: str


EventPoster = Callable[[Mapping[str, Any], Notice], None]


def post_kopf_event(body: Mapping[str, Any], notice: Notice) -> None:
    kopf.event(body, type=notice.type, reason=notice.reason, message=notice.message)


def _consume_outcome(future: asyncio.Future[list[Notice]]) -> None:
    """Mark a pass's error as retrieved: the caller that ran it re-raises it; joiners may be none."""
    if not future.cancelled():
        future.exception()


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Reconciler:
    """Applies MiliDeployments; one instance per operator, shared by all handlers."""

    def __init__(
        self,
        kube: KubeClient,
        config: OperatorConfig,
        post_event: EventPoster = post_kopf_event,
        clock: Callable[[], str] = utc_now,
    ) -> None:
        self.kube = kube
        self.config = config
        self.post_event = post_event
        self.clock = clock
        self._locks: collections.defaultdict[tuple[str, str], asyncio.Lock] = collections.defaultdict(
            asyncio.Lock
        )
        # Per object, the pass that is queued behind the lock and has not read anything yet.
        self._queued: dict[tuple[str, str], asyncio.Future[list[Notice]]] = {}

    def lock(self, namespace: str, name: str) -> asyncio.Lock:
        """The per-object lock every read-modify-write of one MiliDeployment's status holds."""
        return self._locks[(namespace, name)]

    async def reconcile(self, namespace: str, name: str, trigger: str = "request") -> list[Notice]:
        """Bring the children and status of one MiliDeployment up to date; returns the Events posted.

        Returns once a pass that started after this call has finished (its errors raise here too); a
        call made while another pass is queued joins that pass instead of queueing its own."""
        key = (namespace, name)
        queued = self._queued.get(key)
        if queued is not None:
            notices = await asyncio.shield(queued)
            logger.debug("Reconciled %s/%s after %s (joined a queued pass)", namespace, name, trigger)
            return notices
        future: asyncio.Future[list[Notice]] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_consume_outcome)
        self._queued[key] = future
        try:
            async with self.lock(namespace, name):
                del self._queued[key]  # from here on a new trigger may have seen what this pass reads
                notices = await self._reconcile_locked(namespace, name)
        except BaseException as error:
            if self._queued.get(key) is future:  # cancelled while waiting for the lock
                del self._queued[key]
            if isinstance(error, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(error)
            raise
        future.set_result(notices)
        logger.debug("Reconciled %s/%s after %s: %d notice(s)", namespace, name, trigger, len(notices))
        return notices

    async def _reconcile_locked(self, namespace: str, name: str) -> list[Notice]:
        parent = await self.kube.get(milideployment_path(namespace, name))
        if parent is None or parent.get("metadata", {}).get("deletionTimestamp"):
            return []
        notices = await self._reconcile(parent)
        for notice in notices:
            self.post_event(parent, notice)
        return notices

    async def _reconcile(self, parent: dict[str, Any]) -> list[Notice]:
        metadata = parent["metadata"]
        namespace, name = metadata["namespace"], metadata["name"]
        status = parent.get("status") or {}
        notices: list[Notice] = []
        problem: tuple[str, str] | None = None
        try:
            spec: MiliDeploymentSpec | None = parse_spec(name, parent.get("spec"))
            check_prometheus_url(spec, self.config.allows_prometheus)
        except SpecError as error:
            spec, problem = None, ("InvalidSpec", str(error))
            logger.warning("MiliDeployment %s/%s: %s", namespace, name, error)

        if spec is not None:
            deployment, problem = await self._apply_children(parent, spec, status, notices)
        else:  # leave the children as they are (a typo must not take a model down); still report them
            deployment = await self.kube.get(deployment_path(namespace, name))
            if deployment is not None and not apply.is_owned_by(deployment, metadata.get("uid", "")):
                deployment = None
        if problem is not None:
            metrics.RECONCILE_ERRORS.inc()

        state = ObservedState(name, namespace, metadata.get("generation"), spec, deployment, problem)
        new_status, transitions = compute_status(state, status, self.clock())
        patch = status_patch(status, new_status)
        if patch:
            await self.kube.merge_patch(milideployment_path(namespace, name, "status"), {"status": patch})
        desired = new_status.get("desiredReplicas", status.get("desiredReplicas"))
        if isinstance(desired, int):
            metrics.DESIRED_REPLICAS.labels(namespace=namespace, mili_deployment=name).set(desired)
        for transition in transitions:
            condition = transition.condition
            notices.append(
                Notice(
                    "Warning" if transition.warning else "Normal",
                    condition.reason,
                    f"{condition.type}={condition.status}: {condition.message}",
                )
            )
        return notices

    async def _apply_children(
        self,
        parent: dict[str, Any],
        spec: MiliDeploymentSpec,
        status: Mapping[str, Any],
        notices: list[Notice],
    ) -> tuple[dict[str, Any] | None, tuple[str, str] | None]:
        """Apply the Deployment, the Service and the NetworkPolicy; returns the live Deployment and the
        first problem (a foreign child, a child the API server refused), if any."""
        namespace = parent["metadata"]["namespace"]
        live = await self.kube.get(deployment_path(namespace, spec.name))
        # With autoscaling on, the autoscaler owns spec.replicas of an existing Deployment: leave it out.
        replicas = (
            None if spec.autoscaling.enabled and live is not None else desired_replicas(spec, status, None)
        )
        children = [
            (render_deployment(spec, namespace, replicas, self.config.worker_image), deployment_path),
            (render_service(spec, namespace), service_path),
            (router.render_workers_service(spec, namespace), service_path),
            (render_network_policy(spec, namespace, self.config.operator_namespace), network_policy_path),
        ]
        router_children = [
            (router.render_service_account(spec, namespace), service_account_path),
            (router.render_role(spec, namespace), role_path),
            (router.render_role_binding(spec, namespace), role_binding_path),
            (
                router.render_router_deployment(
                    spec, namespace, self.config.router_image, await self._kv_workers(spec, namespace)
                ),
                deployment_path,
            ),
        ]
        if spec.router.enabled:
            children += router_children
        else:  # spec.router.enabled turned false: the router's children go (only ours)
            await self._delete_owned(
                parent, [(child["metadata"]["name"], path) for child, path in router_children]
            )
        kopf.adopt([child for child, _ in children], owner=parent)
        deployment, problem = await self._apply(
            parent, children[0][0], live, deployment_path(namespace), notices
        )
        for desired, path in children[1:]:
            current = await self.kube.get(path(namespace, desired["metadata"]["name"]))
            _, child_problem = await self._apply(parent, desired, current, path(namespace), notices)
            problem = problem or child_problem
        return deployment, problem

    async def _kv_workers(self, spec: MiliDeploymentSpec, namespace: str) -> list[str]:
        """The ready worker pods' IPs, for a kv_aware router (which must be told them); else none."""
        if not rendering.publishes_kv_events(spec):
            return []
        pods = await self.kube.get(f"{pod_path(namespace)}?labelSelector={selector_string(spec.name)}")
        return router.ready_worker_ips((pods or {}).get("items") or [], spec.name)

    async def _delete_owned(
        self, parent: dict[str, Any], children: list[tuple[str, Callable[..., str]]]
    ) -> None:
        """Delete each of ``children`` (name, path function) that exists and this MiliDeployment owns."""
        namespace, uid = parent["metadata"]["namespace"], parent["metadata"].get("uid", "")
        for name, path in children:
            live = await self.kube.get(path(namespace, name))
            if live is not None and apply.is_owned_by(live, uid):
                await self.kube.delete(path(namespace, name))
                logger.info(
                    "Deleted %s %s/%s (spec.router.enabled is false)", live.get("kind"), namespace, name
                )

    async def _apply(
        self,
        parent: dict[str, Any],
        desired: dict[str, Any],
        live: dict[str, Any] | None,
        collection: str,
        notices: list[Notice],
    ) -> tuple[dict[str, Any] | None, tuple[str, str] | None]:
        """Create or patch one child as planned; returns (the live child if ours, a problem).

        A request the API server refuses for good (``ApiError.is_refusal``: say an invalid nodeSelector)
        is a problem, reported once as the Degraded condition with the API's message; any other API
        error propagates, and the handler retries with backoff."""
        kind, name = desired["kind"], desired["metadata"]["name"]
        plan = apply.plan_apply(desired, live, parent["metadata"].get("uid", ""))
        if plan.action == apply.CONFLICT:  # reported once, as the Degraded condition's transition
            return None, ("ChildConflict", plan.reason)
        try:
            if plan.action == apply.CREATE:
                created = await self.kube.create(collection, plan.body)
                logger.info("Created %s %s/%s", kind, desired["metadata"]["namespace"], name)
                notices.append(Notice("Normal", "Created", f"Created {kind} {name}"))
                return created, None
            if plan.action == apply.PATCH:
                patched = await self.kube.merge_patch(f"{collection}/{name}", plan.body)
                changed = ", ".join(plan.changed)
                logger.info("Updated %s %s/%s: %s", kind, desired["metadata"]["namespace"], name, changed)
                notices.append(Notice("Normal", "Updated", f"Updated {kind} {name}: {changed}"))
                return patched, None
        except ApiError as error:
            if not error.is_refusal:
                raise
            logger.warning("The API server refused %s %s: %s", kind, name, error)
            return live, ("ChildRejected", f"the API server refused {kind} {name}: {error.message}")
        return live, None
