"""Apply planning: create, patch only on real differences, remove dropped fields, respect ownership."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from mili.operator.apply import (
    CONFLICT,
    CREATE,
    LAST_APPLIED_ANNOTATION,
    PATCH,
    UNCHANGED,
    is_subset,
    plan_apply,
    with_removals,
)

UID = "uid-1"


def desired(replicas: int | None = 2, **pod_spec: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "selector": {"matchLabels": {"app": "w"}},
        "template": {
            "spec": {"containers": [{"name": "worker", "image": "img:1", "args": ["serve"]}], **pod_spec}
        },
    }
    if replicas is not None:
        spec["replicas"] = replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "chat",
            "namespace": "ns",
            "labels": {"app": "w"},
            "ownerReferences": [{"uid": UID, "kind": "MiliDeployment", "name": "chat"}],
        },
        "spec": spec,
    }


def server_side(created: dict[str, Any]) -> dict[str, Any]:
    """What an API server returns: the object plus defaults and bookkeeping."""
    live = copy.deepcopy(created)
    live["metadata"].update({"uid": "child", "resourceVersion": "7", "generation": 1})
    live["spec"]["template"]["spec"]["containers"][0].update(
        {"imagePullPolicy": "IfNotPresent", "terminationMessagePath": "/dev/termination-log"}
    )
    live["spec"]["template"]["spec"]["restartPolicy"] = "Always"
    live["spec"].setdefault("replicas", 1)
    live["spec"]["strategy"] = {"type": "RollingUpdate"}
    live["status"] = {"replicas": 2}
    return live


def applied(obj: dict[str, Any]) -> dict[str, Any]:
    return server_side(plan_apply(obj, None, UID).body)


def test_absent_child_is_created_with_its_last_applied_record():
    plan = plan_apply(desired(), None, UID)
    assert plan.action == CREATE
    record = json.loads(plan.body["metadata"]["annotations"][LAST_APPLIED_ANNOTATION])
    assert "replicas" not in record["spec"] and "ownerReferences" not in record["metadata"]
    assert plan.body["spec"]["replicas"] == 2


def test_server_defaults_are_not_drift():
    assert plan_apply(desired(), applied(desired()), UID).action == UNCHANGED


def test_a_changed_field_is_patched_and_named():
    live = applied(desired())
    changed = desired()
    changed["spec"]["template"]["spec"]["containers"][0]["args"] = ["serve", "--max-num-seqs", "8"]
    plan = plan_apply(changed, live, UID)
    assert plan.action == PATCH and plan.changed == ("spec.template",)
    assert plan.body["spec"]["template"]["spec"]["containers"][0]["args"] == ["serve", "--max-num-seqs", "8"]
    assert "replicas" not in plan.body["spec"], "replicas were equal"


def test_a_hand_edit_of_an_owned_field_is_reverted():
    live = applied(desired())
    live["spec"]["template"]["spec"]["containers"][0]["image"] = "hacked:1"
    plan = plan_apply(desired(), live, UID)
    assert plan.action == PATCH
    assert plan.body["spec"]["template"]["spec"]["containers"][0]["image"] == "img:1"


def test_a_field_dropped_from_the_spec_is_removed():
    live = applied(desired(nodeSelector={"pool": "gpu"}))
    plan = plan_apply(desired(), live, UID)
    assert plan.action == PATCH
    assert plan.body["spec"]["template"]["spec"]["nodeSelector"] is None


def test_replicas_are_patched_when_set_and_left_alone_when_absent():
    live = applied(desired(replicas=2))
    live["spec"]["replicas"] = 5  # e.g. the autoscaler
    assert plan_apply(desired(replicas=None), live, UID).action == UNCHANGED
    plan = plan_apply(desired(replicas=2), live, UID)
    assert plan.action == PATCH and plan.changed == ("spec.replicas",) and plan.body["spec"]["replicas"] == 2


def test_turning_autoscaling_on_never_removes_replicas():
    live = applied(desired(replicas=3))
    changed = desired(replicas=None)
    changed["spec"]["template"]["spec"]["containers"][0]["image"] = "img:2"
    plan = plan_apply(changed, live, UID)
    assert plan.action == PATCH and "replicas" not in plan.body["spec"]


def test_an_object_owned_by_someone_else_is_a_conflict():
    live = applied(desired())
    live["metadata"]["ownerReferences"] = [{"uid": "someone-else"}]
    plan = plan_apply(desired(), live, UID)
    assert plan.action == CONFLICT and "not owned" in plan.reason


@pytest.mark.parametrize(
    ("wanted", "live", "expected"),
    [
        ({"a": 1}, {"a": 1, "b": 2}, True),
        ({"a": 1}, {"a": 2}, False),
        ({"a": {"b": [1, {"c": 1}]}}, {"a": {"b": [1, {"c": 1, "d": 0}]}}, True),
        ({"a": [1, 2]}, {"a": [1, 2, 3]}, False),
        ({"a": {}}, {"a": {"x": 1}}, True),
        ({"a": 1}, {}, False),
        ("1", 1, False),
    ],
)
def test_is_subset(wanted, live, expected):
    assert is_subset(wanted, live) is expected


def test_with_removals_nulls_what_went_away_at_any_depth():
    previous = {"a": {"b": 1, "c": 2}, "d": [1], "e": 3}
    wanted = {"a": {"b": 1}, "d": [2]}
    assert with_removals(wanted, previous) == {"a": {"b": 1, "c": None}, "d": [2], "e": None}


def test_quantities_the_api_server_canonicalizes_are_no_drift():
    resources = {"requests": {"cpu": "1000m", "memory": "1024Mi"}, "limits": {"memory": "1024Mi"}}
    want = desired(containers=[{"name": "worker", "image": "img:1", "resources": resources}])
    want["spec"]["template"]["spec"]["volumes"] = [{"name": "tmp", "emptyDir": {"sizeLimit": "1024Mi"}}]
    live = server_side(plan_apply(want, None, UID).body)
    container = live["spec"]["template"]["spec"]["containers"][0]
    container["resources"] = {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "1Gi"}}
    live["spec"]["template"]["spec"]["volumes"][0]["emptyDir"]["sizeLimit"] = "1Gi"
    assert plan_apply(want, live, UID).action == UNCHANGED

    container["resources"]["requests"]["cpu"] = "2"
    assert plan_apply(want, live, UID).action == PATCH, "a real change is still one"


def test_only_quantity_fields_compare_by_value():
    want = desired(containers=[{"name": "worker", "image": "img:1", "args": ["--block-size", "1000m"]}])
    live = server_side(plan_apply(want, None, UID).body)
    live["spec"]["template"]["spec"]["containers"][0]["args"] = ["--block-size", "1"]
    assert plan_apply(want, live, UID).action == PATCH
