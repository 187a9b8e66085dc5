"""The CRD, kustomize bases and samples: they build, agree with the operator, stay least-privilege."""

from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from mili.common import settings
from mili.operator import crd as crd_generator
from mili.operator.config import parse_config
from mili.operator.spec import (
    PULL_POLICIES,
    SERVICE_TYPES,
    SpecError,
    parse_model_source,
    parse_spec,
)
from mili_testing import require_binary

ROOT = Path(__file__).resolve().parents[3]
CRD_PATH = ROOT / "crds" / "milideployment.yaml"
KUSTOMIZATIONS = ["manifests", "manifests/operator", "manifests/samples/cpu", "manifests/samples/gpu"]
SAMPLES = {
    "cpu": "manifests/samples/cpu/milideployment.yaml",
    "gpu": "manifests/samples/gpu/milideployment.yaml",
}


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


@pytest.fixture(scope="module")
def schema(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Default a value the way the API server does from a structural schema."""
    if not isinstance(value, dict) or "properties" not in schema:
        return value
    value = copy.deepcopy(value)
    for key, prop in schema["properties"].items():
        if key not in value and "default" in prop:
            value[key] = copy.deepcopy(prop["default"])
        if key in value:
            value[key] = apply_defaults(prop, value[key])
    return value


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_kustomizations_build(path: str):
    kubectl = require_binary("kubectl")
    built = subprocess.run(
        [kubectl, "kustomize", str(ROOT / path)], capture_output=True, text=True, timeout=60
    )
    assert built.returncode == 0, built.stderr
    kinds = [doc["kind"] for doc in yaml.safe_load_all(built.stdout) if doc]
    if path in ("manifests", "manifests/operator"):
        expected = {
            "Namespace",
            "CustomResourceDefinition",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
        }
        assert expected | {"Deployment"} <= set(kinds)
    else:
        assert "MiliDeployment" in kinds


def test_crd_names_scale_subresource_and_printer_columns(crd):
    assert crd["metadata"]["name"] == "milideployments.mili.dev"
    assert crd["spec"]["names"]["shortNames"] == ["mili"]
    (version,) = crd["spec"]["versions"]
    assert version["name"] == "v1alpha1" and version["subresources"]["status"] == {}
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Model", "Replicas", "Ready", "KV", "Queue", "Age"]


def test_crd_defaults_are_the_operator_defaults(schema):
    defaulted = apply_defaults(schema, {"spec": {}})["spec"]
    assert defaulted["model"]["source"] == "builtin:smollm2-135m-instruct"
    assert parse_spec("chat", defaulted) == parse_spec("chat", {})


def test_the_checked_in_crd_is_what_the_settings_declaration_generates():
    text = CRD_PATH.read_text()
    assert crd_generator.render(text) == text, "crds/milideployment.yaml is out of date: run `make crds`"


def test_the_crd_generator_check_mode_fails_on_a_drifted_crd(tmp_path, monkeypatch):
    drifted = CRD_PATH.read_text().replace("- 128\n", "- 128\n                    - 24\n", 1)
    assert drifted != CRD_PATH.read_text()
    monkeypatch.setattr(crd_generator, "CRD_PATH", tmp_path / "milideployment.yaml")
    crd_generator.CRD_PATH.write_text(drifted)
    assert crd_generator.main(["--check"]) == 1
    assert crd_generator.main([]) == 0 and crd_generator.main(["--check"]) == 0
    assert crd_generator.CRD_PATH.read_text() == CRD_PATH.read_text()


def test_crd_schema_is_structural(schema):
    def walk(node: dict[str, Any], where: str) -> None:
        assert (
            "type" in node
            or node.get("x-kubernetes-preserve-unknown-fields")
            or node.get("x-kubernetes-int-or-string")
        ), f"{where} has no type"
        for key, child in (node.get("properties") or {}).items():
            walk(child, f"{where}.{key}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{where}[]")

    walk(schema, "")


SOURCES = [
    "hf://Qwen/Qwen3-0.6B",
    "hf://Qwen/Qwen3-0.6B@refs/pr/1",
    "pvc://models/qwen3",
    "pvc://models",
    "file:///opt/models/x",
    "builtin:smollm2-135m-instruct",
    "ftp://example.com/x",
    "hf://just-a-name",
    "file://relative",
    "builtin:",
    "s3://bucket/model",
]


@pytest.mark.parametrize("source", SOURCES)
def test_crd_source_pattern_never_refuses_what_the_operator_accepts(schema, source):
    pattern = schema["properties"]["spec"]["properties"]["model"]["properties"]["source"]["pattern"]
    try:
        parse_model_source(source)
    except SpecError:
        operator_accepts = False
    else:
        operator_accepts = True
    schema_accepts = re.search(pattern, source) is not None
    assert schema_accepts == operator_accepts


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"replicas": -1}, "replicas"),
        ({"engine": {"kernels": "x"}}, "kernels"),
        ({"engine": {"blockSize": 24}}, "24"),
    ],
)
def test_crd_schema_refuses_what_a_schema_can_say(schema, bad, field):
    with pytest.raises(jsonschema.ValidationError, match=field if field != "replicas" else "-1"):
        jsonschema.Draft4Validator(schema).validate({"spec": bad})


@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_samples_pass_the_schema_and_the_operator(schema, sample):
    body = yaml.safe_load((ROOT / SAMPLES[sample]).read_text())
    jsonschema.Draft4Validator(schema).validate(body)
    spec = parse_spec(body["metadata"]["name"], apply_defaults(schema, body)["spec"])
    if sample == "gpu":
        assert spec.model.source.uri == "hf://Qwen/Qwen3-0.6B" and spec.resources.gpus == 1
        assert spec.api_key_secret_ref is not None and spec.autoscaling.enabled
    else:
        assert spec.model.source.scheme == "builtin" and spec.resources.gpus == 0


def test_rbac_is_least_privilege():
    docs = list(yaml.safe_load_all((ROOT / "manifests/operator/rbac.yaml").read_text()))
    (role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    granted = {
        (g, r): set(rule["verbs"])
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }
    assert granted == {
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
        ("mili.dev", "milideployments"): {"get", "list", "watch", "patch"},
        ("mili.dev", "milideployments/status"): {"get", "patch"},
        ("mili.dev", "milideployments/finalizers"): {"update"},
        ("apps", "deployments"): {"get", "list", "watch", "create", "patch", "delete"},
        ("", "services"): {"get", "list", "watch", "create", "patch"},
        ("networking.k8s.io", "networkpolicies"): {"get", "list", "watch", "create", "patch"},
        ("", "serviceaccounts"): {"get", "create", "patch", "delete"},
        ("rbac.authorization.k8s.io", "roles"): {"get", "create", "patch", "delete"},
        ("rbac.authorization.k8s.io", "rolebindings"): {"get", "create", "patch", "delete"},
        ("", "pods"): {"get", "list", "watch"},
        ("", "events"): {"create"},
    }
    # The API server lets the operator grant the router's Role only with permissions the operator holds.
    from mili.operator.router import render_role

    for rule in render_role(parse_spec("chat", {}), "ns")["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert set(rule["verbs"]) <= granted[(group, resource)]


def test_operator_deployment_runs_non_root_with_args_the_cli_accepts():
    deployment = yaml.safe_load((ROOT / "manifests/operator/deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    config = parse_config(container["args"])
    assert config.all_namespaces
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (ports["healthz"], ports["metrics"]) == (config.liveness_port, config.metrics_port)
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_crd_enums_are_the_operator_choices(schema):
    spec = schema["properties"]["spec"]["properties"]
    assert tuple(spec["model"]["properties"]["dtype"]["enum"]) == settings.DTYPE_CHOICES
    assert tuple(spec["engine"]["properties"]["kernels"]["enum"]) == settings.KERNEL_CHOICES
    assert tuple(spec["engine"]["properties"]["blockSize"]["enum"]) == settings.BLOCK_SIZES
    assert tuple(spec["service"]["properties"]["type"]["enum"]) == SERVICE_TYPES
    assert tuple(spec["imagePullPolicy"]["enum"]) == PULL_POLICIES


def _documents(root: str) -> list[dict[str, Any]]:
    docs = []
    for path in sorted((ROOT / root).rglob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if isinstance(doc, dict)]
    return docs


def test_samples_ship_no_keys():
    for doc in _documents("manifests/samples"):
        assert doc.get("kind") != "Secret" and "secretGenerator" not in doc, doc
    text = "".join(p.read_text() for p in (ROOT / "manifests/samples").rglob("*.yaml"))
    assert "change-me" not in text and "literals" not in text


def test_every_emptydir_of_the_manifests_has_a_size_limit():
    for doc in _documents("manifests"):
        for volume in ((doc.get("spec") or {}).get("template") or {}).get("spec", {}).get("volumes") or []:
            if "emptyDir" in volume:
                assert (volume["emptyDir"] or {}).get("sizeLimit"), f"{doc['metadata']['name']}: {volume}"


def test_grafana_takes_its_admin_password_from_a_generated_secret():
    (grafana,) = [d for d in _documents("manifests/grafana") if d.get("kind") == "Deployment"]
    (container,) = grafana["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    ref = env["GF_SECURITY_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == ("grafana-admin", "admin-password")
    assert "optional" not in ref, "no Secret, no Grafana: never a default password"
    script = (ROOT / "scripts/grafana-admin-secret.sh").read_text()
    assert "grafana-admin" in script and "/dev/urandom" in script and "admin-password" in script
