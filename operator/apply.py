"""Pure apply planning: given the desired child object and the live one, what (if anything) to send.

Like `kubectl apply`, the last applied configuration is kept in an annotation on the child, so a field
that the spec stops setting is removed (a ``null`` in the JSON merge patch) instead of lingering. The
live object is compared with ``is_subset`` (Go's ``equality.Semantic.DeepDerivative``): fields the API
server defaults do not count as drift, so re-running apply on an unchanged spec sends nothing.

``spec.replicas`` is never part of the recorded configuration and never removed: when the autoscaler
owns it the desired object simply has no ``spec.replicas``.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from mili.operator.quantity import same_quantity

LAST_APPLIED_ANNOTATION = "mili.dev/last-applied"
QUANTITY_MAPS = ("requests", "limits")  # maps of resource name -> quantity
QUANTITY_KEYS = ("sizeLimit",)

CREATE = "create"
PATCH = "patch"
UNCHANGED = "unchanged"
CONFLICT = "conflict"


@dataclass(frozen=True)
class ApplyPlan:
    """``action`` is create, patch, unchanged or conflict; ``body`` is the object or the merge patch."""

    action: str
    body: dict[str, Any] = field(default_factory=dict)
    changed: tuple[str, ...] = ()  # top-level paths that differ, for Events: ("spec.template", ...)
    reason: str = ""


def is_subset(desired: Any, live: Any, key: str = "") -> bool:
    """Whether every field set in ``desired`` has the same value in ``live`` (lists: item by item).

    Resource quantities (under ``requests``/``limits``, and ``sizeLimit``) compare by value: the API
    server stores "1000m" as "1" and "1024Mi" as "1Gi", which is no drift."""
    if isinstance(desired, dict):
        quantities = key in QUANTITY_MAPS
        return isinstance(live, dict) and all(
            k in live and (same_quantity(v, live[k]) if quantities else is_subset(v, live[k], k))
            for k, v in desired.items()
        )
    if isinstance(desired, list):
        return isinstance(live, list) and len(desired) == len(live) and all(map(is_subset, desired, live))
    return desired == live or (key in QUANTITY_KEYS and same_quantity(desired, live))


def with_removals(desired: dict[str, Any], previous: dict[str, Any]) -> dict[str, Any]:
    """A JSON merge patch that sets ``desired`` and removes keys ``previous`` had and ``desired`` lacks."""
    patch: dict[str, Any] = {}
    for key, old in previous.items():
        if key not in desired:
            patch[key] = None
        elif isinstance(old, dict) and isinstance(desired[key], dict):
            patch[key] = with_removals(desired[key], old)
    for key, new in desired.items():
        if not (isinstance(new, dict) and isinstance(previous.get(key), dict)):
            patch[key] = new
    return patch


def recorded_configuration(desired: dict[str, Any]) -> dict[str, Any]:
    """What is stored as the last applied configuration: no replicas, no owner references, no record."""
    record = copy.deepcopy(desired)
    record.get("spec", {}).pop("replicas", None)
    metadata = record.get("metadata", {})
    metadata.pop("ownerReferences", None)
    metadata.get("annotations", {}).pop(LAST_APPLIED_ANNOTATION, None)
    return record


def last_applied(live: dict[str, Any]) -> dict[str, Any]:
    """The configuration recorded on ``live`` by the previous apply ({} when absent or unreadable)."""
    text = live.get("metadata", {}).get("annotations", {}).get(LAST_APPLIED_ANNOTATION)
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def is_owned_by(live: dict[str, Any], owner_uid: str) -> bool:
    return any(ref.get("uid") == owner_uid for ref in live.get("metadata", {}).get("ownerReferences") or [])


def _changed_paths(record: dict[str, Any], live: dict[str, Any], previous: dict[str, Any]) -> tuple[str, ...]:
    paths = []
    for section in ("metadata", "spec"):
        for key in sorted(set(record.get(section, {})) | set(previous.get(section, {}))):
            new = record.get(section, {}).get(key)
            if new != previous.get(section, {}).get(key) or not is_subset(
                new, live.get(section, {}).get(key)
            ):
                paths.append(f"{section}.{key}")
    return tuple(paths)


def plan_apply(desired: dict[str, Any], live: dict[str, Any] | None, owner_uid: str) -> ApplyPlan:
    """Decide how to bring ``live`` (None: absent) to ``desired`` (owner references already set)."""
    record = recorded_configuration(desired)
    annotation = {LAST_APPLIED_ANNOTATION: json.dumps(record, sort_keys=True, separators=(",", ":"))}
    if live is None:
        body = copy.deepcopy(desired)
        body["metadata"].setdefault("annotations", {}).update(annotation)
        return ApplyPlan(CREATE, body)

    if not is_owned_by(live, owner_uid):
        kind = desired.get("kind", "object")
        return ApplyPlan(
            CONFLICT,
            reason=f"{kind} {desired['metadata']['name']} exists and is not owned by this MiliDeployment",
        )

    previous = last_applied(live)
    changed = list(_changed_paths(record, live, previous))
    patch = with_removals(record, previous) if changed else {}
    replicas = desired.get("spec", {}).get("replicas")
    if replicas is not None and live.get("spec", {}).get("replicas") != replicas:
        changed.append("spec.replicas")
        patch.setdefault("spec", {})["replicas"] = replicas
    if not changed:
        return ApplyPlan(UNCHANGED)
    patch.setdefault("metadata", {}).setdefault("annotations", {}).update(annotation)
    return ApplyPlan(PATCH, patch, tuple(changed))
