"""Rendering the vllm-router in front of a MiliDeployment's workers (pure functions, no cluster)."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from mili.operator.rendering import render_network_policy, render_service, selector_labels
from mili.operator.router import (
    gateway_args,
    render_role,
    render_role_binding,
    render_router_deployment,
    render_service_account,
    render_workers_service,
    router_args,
)
from mili.operator.spec import SpecError, parse_spec

IMAGE = "mili-router:test"


def flag_values(args: list[str], flag: str) -> list[str]:
    """The values after ``flag`` up to the next flag."""
    start = args.index(flag) + 1
    end = next((i for i in range(start, len(args)) if args[i].startswith("--")), len(args))
    return args[start:end]


def test_the_router_is_on_by_default_with_one_cache_aware_replica():
    spec = parse_spec("chat", {})
    assert (spec.router.enabled, spec.router.replicas, spec.router.policy) == (True, 1, "cache_aware")


@pytest.mark.parametrize(
    ("router", "field"),
    [
        ({"policy": "least_load"}, "spec.router.policy"),
        ({"replicas": 0}, "spec.router.replicas"),
        ({"enabled": "yes"}, "spec.router.enabled"),
        ({"queueSize": 3}, "spec.router.queueSize"),
    ],
)
def test_bad_router_fields_are_refused_naming_the_field(router, field):
    with pytest.raises(SpecError) as caught:
        parse_spec("chat", {"router": router})
    assert caught.value.field == field


def test_the_router_discovers_this_deployments_workers_and_routes_by_the_policy():
    spec = parse_spec("chat", {"router": {"policy": "round_robin", "replicas": 2}})
    deployment = render_router_deployment(spec, "ns", IMAGE)
    assert deployment["metadata"]["name"] == "chat-router" and deployment["spec"]["replicas"] == 2
    gateway, container = deployment["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert container["command"] == ["vllm-router"] and container["image"] == IMAGE
    assert "--service-discovery" in args
    assert dict(item.split("=") for item in flag_values(args, "--selector")) == selector_labels("chat")
    assert flag_values(args, "--service-discovery-namespace") == ["ns"]
    assert flag_values(args, "--service-discovery-port") == ["8000"]
    assert flag_values(args, "--policy") == ["round_robin"]
    assert "--disable-retries" not in args and "--disable-circuit-breaker" not in args
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"router": 8001, "metrics": 29000}
    assert flag_values(args, "--port") == ["8001"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "router"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "router"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "chat-router" and pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert gateway["securityContext"]["readOnlyRootFilesystem"] is True
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "29000"
    # The Deployment's selector is what its pods carry.
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_the_gateway_is_the_pods_front_door_and_forwards_to_the_router_beside_it():
    spec = parse_spec("chat", {})
    gateway, router = render_router_deployment(spec, "ns", IMAGE)["spec"]["template"]["spec"]["containers"]
    assert gateway["command"] == ["mili-gateway"] and gateway["image"] == IMAGE
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert ports == {"http": 8000, "gateway-metrics": 29001}
    assert flag_values(gateway["args"], "--port") == ["8000"]
    router_port = next(p["containerPort"] for p in router["ports"] if p["name"] == "router")
    assert flag_values(gateway["args"], "--router-url") == [f"http://127.0.0.1:{router_port}"]
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/gateway/health", "port": "http"}
    # Ready once the router behind it answers: /health passes through to the router's.
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    # The Service's target port is the gateway's.
    assert render_service(spec, "ns")["spec"]["ports"][0]["targetPort"] == "http"


def test_the_rendered_gateway_arguments_are_ones_mili_gateway_accepts():
    from mili.gateway.cli import parse_args

    spec = parse_spec("chat", {"autoscaling": {"minReplicas": 0, "coldStartTimeoutSeconds": 45}})
    args = parse_args(gateway_args(spec))
    assert (args.port, args.hold_timeout, args.metrics_port) == (8000, 45.0, 29001)


def test_the_api_key_reaches_the_router_from_the_secret():
    spec = parse_spec("chat", {"apiKeySecretRef": {"name": "keys", "key": "chat"}})
    _gateway, container = render_router_deployment(spec, "ns", IMAGE)["spec"]["template"]["spec"][
        "containers"
    ]
    assert flag_values(container["args"], "--api-key") == ["$(MILI_API_KEY)"]
    assert container["env"] == [
        {"name": "MILI_API_KEY", "valueFrom": {"secretKeyRef": {"name": "keys", "key": "chat"}}}
    ]
    assert "--api-key" not in router_args(parse_spec("chat", {}), "ns")


def test_the_rendered_arguments_are_ones_vllm_router_accepts():
    binary = Path(__import__("sys").executable).with_name("vllm-router")
    if not binary.exists():
        pytest.skip("vllm-router is not installed")
    help_text = subprocess.run([binary, "--help"], capture_output=True, text=True, check=True).stdout
    spec = parse_spec("chat", {"apiKeySecretRef": {"name": "keys", "key": "chat"}})
    for flag in (arg for arg in router_args(spec, "ns") if arg.startswith("--")):
        assert flag in help_text, f"vllm-router has no {flag}: {shlex.join(router_args(spec, 'ns'))}"
    assert spec.router.policy in help_text


def test_the_router_may_only_read_pods_of_its_namespace():
    spec = parse_spec("chat", {})
    account = render_service_account(spec, "ns")
    role = render_role(spec, "ns")
    binding = render_role_binding(spec, "ns")
    assert (
        account["metadata"]["name"]
        == role["metadata"]["name"]
        == binding["metadata"]["name"]
        == "chat-router"
    )
    assert role["kind"] == "Role" and role["metadata"]["namespace"] == "ns"
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "chat-router",
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "chat-router", "namespace": "ns"}]


def test_the_service_selects_the_router_and_a_headless_service_the_workers():
    spec = parse_spec("chat", {})
    router_pod_labels = render_router_deployment(spec, "ns", IMAGE)["spec"]["template"]["metadata"]["labels"]
    service = render_service(spec, "ns")
    assert service["metadata"]["name"] == "chat"
    assert service["spec"]["selector"].items() <= router_pod_labels.items()
    assert service["spec"]["selector"] != selector_labels("chat")
    workers = render_workers_service(spec, "ns")
    assert workers["metadata"]["name"] == "chat-workers"
    assert workers["spec"]["clusterIP"] == "None" and workers["spec"]["selector"] == selector_labels("chat")


def test_the_network_policy_admits_the_rendered_router_pods():
    spec = parse_spec("chat", {})
    router_pod_labels = render_router_deployment(spec, "ns", IMAGE)["spec"]["template"]["metadata"]["labels"]
    policy = render_network_policy(spec, "ns", "mili-system")
    selectors = [
        peer["podSelector"]["matchLabels"]
        for peer in policy["spec"]["ingress"][0]["from"]
        if "podSelector" in peer
    ]
    assert any(selector.items() <= router_pod_labels.items() for selector in selectors)


def test_without_the_router_the_service_selects_the_workers():
    service = render_service(parse_spec("chat", {"router": {"enabled": False}}), "ns")
    assert service["spec"]["selector"] == selector_labels("chat")


def test_a_held_request_may_wait_as_long_as_a_cold_start():
    spec = parse_spec("chat", {"autoscaling": {"minReplicas": 0, "coldStartTimeoutSeconds": 120}})
    assert flag_values(router_args(spec, "ns"), "--queue-timeout-secs") == ["120"]
    assert flag_values(gateway_args(spec), "--hold-timeout") == ["120"]
    assert flag_values(router_args(parse_spec("chat", {}), "ns"), "--queue-timeout-secs") == ["300"]
    with pytest.raises(SpecError) as caught:
        parse_spec("chat", {"autoscaling": {"coldStartTimeoutSeconds": 0}})
    assert caught.value.field == "spec.autoscaling.coldStartTimeoutSeconds"
