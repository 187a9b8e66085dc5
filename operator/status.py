"""Pure status computation: the MiliDeployment's status and conditions from the spec and the child Deployment.

The reconciler owns `observedGeneration`, `replicas`, `readyReplicas`, `selector`, `endpoint`, the
conditions `Available`, `Progressing`, `Degraded` (and `ScalingActive` while autoscaling is off), and
`desiredReplicas` while autoscaling is off. With autoscaling on, `desiredReplicas`, `ScalingActive` and
`autoscaling` belong to the autoscaler and are left alone here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mili.operator.rendering import endpoint_url, selector_string
from mili.operator.spec import MiliDeploymentSpec

AVAILABLE = "Available"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
SCALING_ACTIVE = "ScalingActive"
SECURED = "Secured"
EXTERNAL_SERVICE_TYPES = ("NodePort", "LoadBalancer")


@dataclass(frozen=True)
class Condition:
    type: str
    status: str  # "True", "False" or "Unknown"
    reason: str
    message: str


@dataclass(frozen=True)
class Transition:
    """A condition that changed; each becomes an Event on the MiliDeployment."""

    condition: Condition
    warning: bool


@dataclass(frozen=True)
class ObservedState:
    """What the reconciler saw and did in one pass (``spec`` None when it failed validation)."""

    name: str
    namespace: str
    generation: int | None
    spec: MiliDeploymentSpec | None
    deployment: Mapping[str, Any] | None
    problem: tuple[str, str] | None = None  # (reason, message) that makes the MiliDeployment Degraded


def _bool(value: bool) -> str:
    return "True" if value else "False"


def workload_conditions(state: ObservedState, desired: int | None) -> list[Condition]:
    """Available / Progressing / Degraded for one observed state."""
    if state.problem is not None:
        reason, message = state.problem
        return [Condition(DEGRADED, "True", reason, message)]
    deployment_status = (state.deployment or {}).get("status") or {}
    ready = int(deployment_status.get("readyReplicas") or 0)
    updated = int(deployment_status.get("updatedReplicas") or 0)
    if state.deployment is None:
        return [
            Condition(AVAILABLE, "False", "DeploymentMissing", "the worker Deployment does not exist yet"),
            Condition(PROGRESSING, "True", "Creating", "creating the worker Deployment"),
            Condition(DEGRADED, "False", "AsExpected", "spec is valid"),
        ]
    target = (
        desired if desired is not None else int((state.deployment.get("spec") or {}).get("replicas") or 0)
    )
    ready_text = f"{ready}/{target} replicas ready"
    if target == 0:
        available = Condition(AVAILABLE, "False", "ScaledToZero", "0 replicas requested")
    elif ready > 0:
        available = Condition(AVAILABLE, "True", "MinimumReplicasAvailable", ready_text)
    else:
        available = Condition(AVAILABLE, "False", "NoReadyReplicas", ready_text)
    rolling = ready < target or updated < target
    progressing = Condition(PROGRESSING, _bool(rolling), "RollingOut" if rolling else "Complete", ready_text)
    degraded = Condition(DEGRADED, "False", "AsExpected", "spec is valid")
    for child in deployment_status.get("conditions") or []:
        stuck = child.get("type") == "Progressing" and child.get("status") == "False"
        failed = child.get("type") == "ReplicaFailure" and child.get("status") == "True"
        if stuck or failed:
            degraded = Condition(
                DEGRADED, "True", child.get("reason") or "DeploymentFailing", child.get("message") or ""
            )
    return [available, progressing, degraded]


def secured_condition(spec: MiliDeploymentSpec) -> Condition:
    """``Secured``: False (a Warning) when a Service reachable from outside the cluster takes requests
    without an API key."""
    service_type = spec.service.type
    if spec.api_key_secret_ref is not None:
        return Condition(SECURED, "True", "ApiKeyRequired", "clients must send the API key")
    if service_type not in EXTERNAL_SERVICE_TYPES:
        return Condition(
            SECURED, "True", "ClusterInternal", "the Service is reachable inside the cluster only"
        )
    return Condition(
        SECURED,
        "False",
        "ExternalWithoutApiKey",
        f"spec.service.type {service_type} exposes the model outside the cluster without "
        "spec.apiKeySecretRef: anyone who reaches it can use it",
    )


def _alarming(condition: Condition) -> bool:
    """A condition state that is a Warning: Degraded, not Available, or not Secured."""
    return (
        (condition.type == DEGRADED and condition.status == "True")
        or (condition.type == AVAILABLE and condition.status == "False")
        or (condition.type == SECURED and condition.status == "False")
    )


def _transition(old: Mapping[str, Any] | None, new: Condition) -> Transition | None:
    """The Event-worthy change from ``old`` to ``new``: a flip, a first True (for Secured: a first
    False), or a new Degraded reason."""
    degraded = new.type == DEGRADED and new.status == "True"
    if old is None:
        first_worth_an_event = new.status == "False" if new.type == SECURED else new.status == "True"
        if not first_worth_an_event:
            return None
    elif old.get("status") == new.status and (
        not degraded or (old.get("reason"), old.get("message")) == (new.reason, new.message)
    ):
        return None
    return Transition(new, _alarming(new))


def merge_conditions(
    existing: Sequence[Mapping[str, Any]], updates: Sequence[Condition], now: str
) -> tuple[list[dict[str, Any]], list[Transition]]:
    """Conditions with ``updates`` applied; lastTransitionTime moves only when a status flips."""
    by_type = {c.get("type"): dict(c) for c in existing if c.get("type")}
    transitions = []
    for condition in updates:
        old = by_type.get(condition.type)
        transition = _transition(old, condition)
        if transition is not None:
            transitions.append(transition)
        flipped = old is None or old.get("status") != condition.status
        by_type[condition.type] = {
            "type": condition.type,
            "status": condition.status,
            "reason": condition.reason,
            "message": condition.message,
            "lastTransitionTime": now if flipped else old.get("lastTransitionTime", now),
        }
    order = [AVAILABLE, PROGRESSING, DEGRADED, SECURED, SCALING_ACTIVE]
    merged = sorted(
        by_type.values(), key=lambda c: (order.index(c["type"]) if c["type"] in order else 99, c["type"])
    )
    return merged, transitions


def desired_replicas(spec: MiliDeploymentSpec, status: Mapping[str, Any], live_replicas: int | None) -> int:
    """The replica count to ask for: the spec's without autoscaling, else the autoscaler's (or min)."""
    if not spec.autoscaling.enabled:
        return spec.replicas
    if live_replicas is not None:
        return live_replicas
    previous = status.get("desiredReplicas")
    start = previous if isinstance(previous, int) else spec.autoscaling.min_replicas
    return spec.autoscaling.clamp(start)


def compute_status(
    state: ObservedState, status: Mapping[str, Any], now: str
) -> tuple[dict[str, Any], list[Transition]]:
    """The status fields this reconcile owns (unchanged ones included) and the condition transitions."""
    deployment_status = (state.deployment or {}).get("status") or {}
    new: dict[str, Any] = {
        "replicas": int(deployment_status.get("replicas") or 0),
        "readyReplicas": int(deployment_status.get("readyReplicas") or 0),
        "selector": selector_string(state.name),
    }
    if state.generation is not None:
        new["observedGeneration"] = state.generation
    desired = None
    updates: list[Condition] = []
    if state.spec is not None:
        live = (state.deployment or {}).get("spec", {}).get("replicas")
        desired = desired_replicas(state.spec, status, live)
        new["endpoint"] = endpoint_url(state.name, state.namespace, state.spec.service.port)
        updates.append(secured_condition(state.spec))
        if not state.spec.autoscaling.enabled:
            new["desiredReplicas"] = desired
            updates.append(
                Condition(SCALING_ACTIVE, "False", "AutoscalingDisabled", "spec.autoscaling.enabled is false")
            )
        elif "desiredReplicas" not in status:
            new["desiredReplicas"] = desired
    updates = workload_conditions(state, desired) + updates
    new["conditions"], transitions = merge_conditions(status.get("conditions") or [], updates, now)
    return new, transitions


def status_patch(current: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """Only the keys of ``new`` whose value differs from ``current`` (empty: nothing to write)."""
    return {key: value for key, value in new.items() if current.get(key) != value}
