"""The autoscaler in the operator: one Kopf daemon per MiliDeployment with autoscaling on.

Thin around the pure decision (``autoscaling.decide``): every ``spec.autoscaling.intervalSeconds`` it
asks Prometheus, decides, patches ``Deployment.spec.replicas`` when the count changes, writes
``status.desiredReplicas``, ``status.autoscaling`` and the ``ScalingActive`` condition, and posts an
Event for every change. A daemon (Kopf's per-object long-running task) rather than a fixed-interval
timer, so each object keeps its own interval, and its recommendation history lives in the loop.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import kopf

from mili.operator import metrics
from mili.operator.autoscaling import Decision, Observation, Recommendation, decide
from mili.operator.config import OperatorConfig
from mili.operator.kube import ApiError, KubeClient, deployment_path, milideployment_path
from mili.operator.prometheus_api import PrometheusClient, PrometheusError, QuerySettings
from mili.operator.reconcile import EventPoster, Notice, post_kopf_event
from mili.operator.spec import (
    GROUP,
    PLURAL,
    VERSION,
    MiliDeploymentSpec,
    SpecError,
    check_prometheus_url,
    parse_spec,
)
from mili.operator.status import SCALING_ACTIVE, Condition, merge_conditions, status_patch

logger = logging.getLogger(__name__)

HISTORY_LENGTH = 5
DEFAULT_INTERVAL_SECONDS = 15

LockFor = Callable[[str, str], contextlib.AbstractAsyncContextManager[Any]]


def iso_time(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def autoscaling_status(
    previous: Mapping[str, Any], decision: Decision, observation: Observation, now: str
) -> dict[str, Any]:
    """``status.autoscaling`` after ``decision``: the observed metrics (absent when unknown), the last
    decision (its time moves only when it says something new), and on a change ``lastScaleTime`` and a
    history entry (the last five kept)."""
    status: dict[str, Any] = {
        key: value for key, value in previous.items() if key not in ("kvCacheUsage", "queueLength")
    }
    if observation.kv_cache_usage is not None:
        status["kvCacheUsage"] = round(observation.kv_cache_usage, 3)
    if observation.waiting_per_replica is not None:
        status["queueLength"] = round(observation.waiting_per_replica, 3)
    entry = {"from": decision.current, "to": decision.replicas, "reason": decision.reason}
    last = previous.get("lastDecision") or {}
    same = isinstance(last, Mapping) and {k: last.get(k) for k in entry} == entry
    status["lastDecision"] = dict(last) if same else {"time": now, **entry}
    if decision.direction != "none":
        status["lastScaleTime"] = now
        history = [*(previous.get("history") or []), {"time": now, **entry}]
        status["history"] = history[-HISTORY_LENGTH:]
    return status


def scaling_condition(decision: Decision, prometheus_url: str) -> Condition:
    if decision.active:
        message = f"reading KV-cache usage and queue length from {prometheus_url}"
        return Condition(SCALING_ACTIVE, "True", decision.condition_reason, message)
    return Condition(SCALING_ACTIVE, "False", decision.condition_reason, decision.reason)


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), {})


class Autoscaler:
    """Runs autoscaling rounds; one instance per daemon (so per MiliDeployment)."""

    def __init__(
        self,
        kube: KubeClient,
        config: OperatorConfig,
        settings: QuerySettings,
        lock_for: LockFor = lambda namespace, name: contextlib.nullcontext(),
        post_event: EventPoster = post_kopf_event,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.kube = kube
        self.config = config
        self.settings = settings
        self.lock_for = lock_for
        self.post_event = post_event
        self.clock = clock

    def prometheus_url(self, spec: MiliDeploymentSpec) -> str:
        return spec.autoscaling.prometheus_url or self.config.prometheus_url

    async def observe(self, url: str, namespace: str, name: str) -> Observation:
        try:
            async with PrometheusClient(url, self.settings.timeout_seconds) as prometheus:
                return await prometheus.observe(self.settings, namespace, name)
        except PrometheusError as error:
            return Observation.unavailable(str(error))

    async def _read(self, namespace: str, name: str) -> tuple[dict[str, Any], MiliDeploymentSpec] | None:
        """The MiliDeployment and its spec, or None when there is nothing to scale (gone, being
        deleted, autoscaling off, or a spec reconcile already reports as invalid)."""
        parent = await self.kube.get(milideployment_path(namespace, name))
        if parent is None or parent.get("metadata", {}).get("deletionTimestamp"):
            return None
        try:
            spec = parse_spec(name, parent.get("spec"))
            check_prometheus_url(spec, self.config.allows_prometheus)
        except SpecError:
            return None
        return (parent, spec) if spec.autoscaling.enabled else None

    async def run_once(
        self, namespace: str, name: str, history: tuple[Recommendation, ...] | None
    ) -> tuple[Recommendation, ...] | None:
        """One round; returns the recommendation history for the next (None: nothing happened yet).

        A first round (``history`` None) starts the history with the current count, so an operator
        restart can't scale down before a whole scale-down window has passed.
        """
        read = await self._read(namespace, name)
        if read is None:
            return history
        url = self.prometheus_url(read[1])
        observation = await self.observe(url, namespace, name)  # no lock held while Prometheus answers
        async with self.lock_for(namespace, name):
            read = await self._read(namespace, name)
            deployment = await self.kube.get(deployment_path(namespace, name))
            if read is None or deployment is None:  # reconcile creates the Deployment
                return history
            parent, spec = read
            current = int((deployment.get("spec") or {}).get("replicas", 1))
            now = self.clock()
            if history is None:
                history = (Recommendation(now, current),)
            decision = decide(observation, current, spec.autoscaling, history, now)
            if decision.replicas != current:
                await self.kube.merge_patch(
                    deployment_path(namespace, name), {"spec": {"replicas": decision.replicas}}
                )
            notices = await self._write_status(parent, decision, observation, url, iso_time(now))
        self._report(namespace, name, decision)
        for notice in notices:
            self.post_event(parent, notice)
        return decision.recommendations

    async def _write_status(
        self,
        parent: Mapping[str, Any],
        decision: Decision,
        observation: Observation,
        url: str,
        now: str,
    ) -> list[Notice]:
        """Patch the changed status keys; returns the Events the round is worth."""
        status = parent.get("status") or {}
        old_condition = _condition(status, SCALING_ACTIVE)
        condition = scaling_condition(decision, url)
        conditions, _ = merge_conditions(status.get("conditions") or [], [condition], now)
        new = {
            "desiredReplicas": decision.replicas,
            "autoscaling": autoscaling_status(status.get("autoscaling") or {}, decision, observation, now),
            "conditions": conditions,
        }
        patch = status_patch(status, new)
        if "autoscaling" in patch:  # a JSON merge patch removes a key only when it is set to null
            gone = {key: None for key in status.get("autoscaling") or {} if key not in new["autoscaling"]}
            patch["autoscaling"] = {**gone, **new["autoscaling"]}
        if patch:
            metadata = parent["metadata"]
            await self.kube.merge_patch(
                milideployment_path(metadata["namespace"], metadata["name"], "status"), {"status": patch}
            )
        notices = []
        if (old_condition.get("status"), old_condition.get("reason")) != (condition.status, condition.reason):
            kind = "Normal" if decision.active else "Warning"
            notices.append(
                Notice(kind, condition.reason, f"ScalingActive={condition.status}: {condition.message}")
            )
        if decision.direction != "none":
            reason = "ScaledUp" if decision.direction == "up" else "ScaledDown"
            notices.append(Notice("Normal", reason, decision.reason))
        return notices

    @staticmethod
    def _report(namespace: str, name: str, decision: Decision) -> None:
        metrics.DESIRED_REPLICAS.labels(namespace=namespace, mili_deployment=name).set(decision.replicas)
        metrics.SCALE_DECISIONS.labels(direction=decision.direction).inc()
        if decision.direction != "none":
            logger.info("Scaled %s/%s: %s", namespace, name, decision.reason)
        else:
            logger.debug("Autoscaling %s/%s: %s", namespace, name, decision.reason)


def autoscaling_enabled(spec: kopf.Spec, **_: Any) -> bool:
    """Kopf filter: run the daemon only while ``spec.autoscaling.enabled`` is true."""
    return bool((spec.get("autoscaling") or {}).get("enabled"))


def interval_seconds(spec: Mapping[str, Any]) -> float:
    interval = (spec.get("autoscaling") or {}).get("intervalSeconds")
    return (
        float(interval) if isinstance(interval, (int, float)) and interval > 0 else DEFAULT_INTERVAL_SECONDS
    )


def reconcile_lock(memo: kopf.Memo) -> LockFor:
    """The reconciler's per-object lock, so a round and a reconcile pass never interleave their
    read-modify-write of the status conditions."""

    def lock_for(namespace: str, name: str) -> contextlib.AbstractAsyncContextManager[Any]:
        reconciler = getattr(memo, "reconciler", None)
        return reconciler.lock(namespace, name) if reconciler is not None else contextlib.nullcontext()

    return lock_for


@kopf.daemon(GROUP, VERSION, PLURAL, when=autoscaling_enabled, cancellation_timeout=10)
async def autoscale(
    stopped: kopf.DaemonStopped, namespace: str, name: str, spec: kopf.Spec, memo: kopf.Memo, **_: Any
) -> None:
    """Every ``intervalSeconds``: query, decide, apply (``spec`` is Kopf's live view of the object)."""
    autoscaler = Autoscaler(memo.kube, memo.config, QuerySettings.from_environment(), reconcile_lock(memo))
    history: tuple[Recommendation, ...] | None = None
    while not stopped:
        try:
            history = await autoscaler.run_once(namespace, name, history)
        except ApiError as error:
            metrics.RECONCILE_ERRORS.inc()
            logger.warning("Autoscaling %s/%s failed: %s", namespace, name, error)
        except Exception:  # a bug in one round must not end autoscaling for good; the next round retries
            metrics.RECONCILE_ERRORS.inc()
            logger.exception("Autoscaling round of %s/%s failed", namespace, name)
        await stopped.wait(interval_seconds(spec))
