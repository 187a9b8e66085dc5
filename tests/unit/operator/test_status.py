"""Status and conditions computed from the spec and the child Deployment."""

from __future__ import annotations

from typing import Any

import pytest

from mili.operator.spec import parse_spec
from mili.operator.status import ObservedState, compute_status, desired_replicas, status_patch

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def deployment(replicas: int, ready: int, updated: int | None = None, conditions: list | None = None) -> dict:
    status: dict[str, Any] = {
        "replicas": replicas,
        "readyReplicas": ready,
        "updatedReplicas": updated or replicas,
    }
    if conditions:
        status["conditions"] = conditions
    return {"spec": {"replicas": replicas}, "status": status}


def observe(raw: dict | None, child: dict | None, problem=None, generation: int | None = 3) -> ObservedState:
    spec = parse_spec("chat", raw) if raw is not None else None
    return ObservedState("chat", "ns", generation, spec, child, problem)


def conditions_of(status: dict) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


@pytest.mark.parametrize(
    ("child", "available", "progressing"),
    [
        (None, ("False", "DeploymentMissing"), ("True", "Creating")),
        (deployment(2, 0), ("False", "NoReadyReplicas"), ("True", "RollingOut")),
        (deployment(2, 1), ("True", "MinimumReplicasAvailable"), ("True", "RollingOut")),
        (deployment(2, 2), ("True", "MinimumReplicasAvailable"), ("False", "Complete")),
        (deployment(2, 2, updated=1), ("True", "MinimumReplicasAvailable"), ("True", "RollingOut")),
    ],
)
def test_available_and_progressing_follow_the_child(child, available, progressing):
    new, _ = compute_status(observe({"replicas": 2}, child), {}, T0)
    conditions = conditions_of(new)
    assert conditions["Available"] == available and conditions["Progressing"] == progressing
    assert conditions["Degraded"] == ("False", "AsExpected")


def test_status_fields_for_the_scale_subresource_and_clients():
    new, _ = compute_status(observe({"replicas": 2, "service": {"port": 9000}}, deployment(2, 1)), {}, T0)
    assert new["replicas"] == 2 and new["readyReplicas"] == 1 and new["desiredReplicas"] == 2
    assert new["selector"] == "app.kubernetes.io/name=mili-worker,mili.dev/deployment=chat"
    assert new["endpoint"] == "http://chat.ns.svc:9000/v1" and new["observedGeneration"] == 3
    assert conditions_of(new)["ScalingActive"] == ("False", "AutoscalingDisabled")


def test_a_bad_spec_is_degraded_with_the_message_and_a_warning_event():
    problem = ("InvalidSpec", "spec.model.source: 'ftp://x' is not one of hf://, pvc://, file://, builtin:")
    new, transitions = compute_status(observe(None, None, problem), {}, T0)
    degraded = next(c for c in new["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"], degraded["message"]) == ("True", *problem)
    assert [(t.condition.type, t.warning) for t in transitions] == [("Degraded", True)]
    assert "endpoint" not in new


def test_a_failing_rollout_is_degraded():
    stuck = [
        {
            "type": "Progressing",
            "status": "False",
            "reason": "ProgressDeadlineExceeded",
            "message": "too slow",
        }
    ]
    new, _ = compute_status(observe({}, deployment(1, 0, conditions=stuck)), {}, T0)
    assert conditions_of(new)["Degraded"] == ("True", "ProgressDeadlineExceeded")


def test_an_unchanged_world_writes_nothing_and_keeps_transition_times():
    state = observe({"replicas": 2}, deployment(2, 2))
    first, _ = compute_status(state, {}, T0)
    again, transitions = compute_status(state, first, T1)
    assert status_patch(first, again) == {} and transitions == []


def test_transition_time_moves_only_when_a_condition_flips():
    first, _ = compute_status(observe({"replicas": 2}, deployment(2, 0)), {}, T0)
    second, transitions = compute_status(observe({"replicas": 2}, deployment(2, 1)), first, T1)
    times = {c["type"]: c["lastTransitionTime"] for c in second["conditions"]}
    assert times["Available"] == T1 and times["Progressing"] == T0
    assert [(t.condition.type, t.condition.status, t.warning) for t in transitions] == [
        ("Available", "True", False)
    ]
    assert set(status_patch(first, second)) == {"readyReplicas", "conditions"}


def test_losing_all_ready_replicas_is_a_warning():
    first, _ = compute_status(observe({}, deployment(1, 1)), {}, T0)
    _, transitions = compute_status(observe({}, deployment(1, 0)), first, T1)
    assert [(t.condition.type, t.warning) for t in transitions] == [
        ("Available", True),
        ("Progressing", False),
    ]


def test_conditions_owned_by_the_autoscaler_are_kept():
    theirs = {
        "type": "ScalingActive",
        "status": "True",
        "reason": "ValidMetrics",
        "message": "ok",
        "lastTransitionTime": T0,
    }
    spec = {"autoscaling": {"enabled": True, "maxReplicas": 4}}
    new, _ = compute_status(
        observe(spec, deployment(3, 3)), {"conditions": [theirs], "desiredReplicas": 3}, T1
    )
    assert theirs in new["conditions"]
    assert "desiredReplicas" not in new, "the autoscaler owns it once set"


@pytest.mark.parametrize(
    ("raw", "status", "live", "expected"),
    [
        ({"replicas": 3}, {}, 5, 3),
        ({"replicas": 3, "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6}}, {}, 5, 5),
        ({"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6}}, {}, None, 2),
        (
            {"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6}},
            {"desiredReplicas": 4},
            None,
            4,
        ),
        (
            {"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6}},
            {"desiredReplicas": 9},
            None,
            6,
        ),
    ],
)
def test_desired_replicas(raw, status, live, expected):
    assert desired_replicas(parse_spec("chat", raw), status, live) == expected


@pytest.mark.parametrize(
    ("raw", "secured"),
    [
        ({}, ("True", "ClusterInternal")),
        ({"service": {"type": "LoadBalancer"}}, ("False", "ExternalWithoutApiKey")),
        ({"service": {"type": "NodePort"}}, ("False", "ExternalWithoutApiKey")),
        (
            {"service": {"type": "LoadBalancer"}, "apiKeySecretRef": {"name": "k", "key": "token"}},
            ("True", "ApiKeyRequired"),
        ),
    ],
)
def test_an_external_service_without_an_api_key_is_a_warning(raw, secured):
    status, transitions = compute_status(observe(raw, deployment(1, 1)), {}, T0)
    assert conditions_of(status)["Secured"] == secured
    warned = [t for t in transitions if t.condition.type == "Secured"]
    if secured[0] == "False":
        (transition,) = warned
        assert transition.warning and "spec.apiKeySecretRef" in transition.condition.message
        _, again = compute_status(observe(raw, deployment(1, 1)), status, T1)
        assert not [t for t in again if t.condition.type == "Secured"], "one Event, not one per pass"
    else:
        assert not warned
