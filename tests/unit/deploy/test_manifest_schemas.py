"""Every kustomization builds, and every object it renders validates against its schema.

MiliDeployments are checked against the CRD's own openAPIV3Schema; built-in kinds against the
`kubernetes` client's models (pydantic: strict types, unknown fields refused, required fields
required). The operator's rendered children are checked the same way. Kustomizations are discovered,
so a new overlay is covered without touching this file.
"""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes.client
import pydantic
import pytest
import yaml

from mili.operator.rendering import render_deployment, render_service
from mili.operator.spec import parse_spec
from mili_testing import require_binary

ROOT = Path(__file__).resolve().parents[3]
KUSTOMIZATIONS = sorted(
    str(path.parent.relative_to(ROOT))
    for folder in ("manifests", "crds", "dashboards")
    for path in (ROOT / folder).rglob("kustomization.yaml")
)


@cache
def build(path: str) -> tuple[dict[str, Any], ...]:
    kubectl = require_binary("kubectl")
    built = subprocess.run(
        [kubectl, "kustomize", str(ROOT / path)], capture_output=True, text=True, timeout=60
    )
    assert built.returncode == 0, f"kubectl kustomize {path}:\n{built.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(built.stdout) if doc)


@cache
def crd_schema() -> dict[str, Any]:
    crd = yaml.safe_load((ROOT / "crds" / "milideployment.yaml").read_text())
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def model_name(api_version: str, kind: str) -> str:
    """`apps/v1` + `Deployment` -> `V1Deployment` (the kubernetes client's class name)."""
    return api_version.rsplit("/", 1)[-1].capitalize() + kind


def model_errors(obj: dict[str, Any], where: str) -> list[str]:
    """Where ``obj`` does not fit its kubernetes client model (pydantic, strict, unknown fields refused)."""
    model = getattr(kubernetes.client, model_name(obj["apiVersion"], obj["kind"]), None)
    if model is None:
        return [f"{where}: the kubernetes client has no model {model_name(obj['apiVersion'], obj['kind'])}"]
    try:
        model.model_validate(obj)
    except pydantic.ValidationError as exc:
        return [f"{where}: {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
    return []


def object_errors(obj: dict[str, Any]) -> list[str]:
    where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    if obj.get("kind") == "MiliDeployment":
        validator = jsonschema.Draft4Validator(crd_schema())
        return [f"{where}: {'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(obj)]
    return model_errors(obj, where)


def test_every_folder_with_manifests_has_a_kustomization():
    assert {"manifests", "manifests/operator", "manifests/samples/cpu", "manifests/samples/gpu"} <= set(
        KUSTOMIZATIONS
    )


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_kustomization_builds_and_every_object_validates(path: str):
    objects = build(path)
    assert objects, f"{path} renders nothing"
    errors = [error for obj in objects for error in object_errors(obj)]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("sample", ["cpu", "gpu"])
def test_rendered_children_of_each_sample_validate(sample: str):
    (parent,) = [obj for obj in build(f"manifests/samples/{sample}") if obj["kind"] == "MiliDeployment"]
    spec = parse_spec(parent["metadata"]["name"], parent["spec"])
    children = [render_deployment(spec, "default", 1, "mili-worker:0.1.0"), render_service(spec, "default")]
    errors = [error for child in children for error in object_errors(child)]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize(
    ("obj", "error"),
    [
        ({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"portz": []}}, "portz"),
        (
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
             "spec": {"ports": [{"port": "80"}]}},
            "valid integer",
        ),
        ({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"replica": 1}},
         "replica"),
        (
            {"apiVersion": "mili.dev/v1alpha1", "kind": "MiliDeployment", "metadata": {"name": "m"},
             "spec": {"engine": {"kernels": "fast"}}},
            "fast",
        ),
    ],
)  # fmt: skip
def test_the_validation_refuses_broken_objects(obj: dict[str, Any], error: str):
    assert any(error in message for message in object_errors(obj)), object_errors(obj)
