"""Rendering the vllm-router in front of a MiliDeployment's workers (pure functions, no cluster)."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from mili.operator.rendering import (
    KV_EVENTS_PORT,
    KV_REPLAY_PORT,
    render_deployment,
    render_network_policy,
    render_service,
    selector_labels,
    worker_args,
)
from mili.operator.router import (
    gateway_args,
    ready_worker_ips,
    render_role,
    render_role_binding,
    render_router_deployment,
    render_service_account,
    render_workers_service,
    router_args,
)
from mili.operator.spec import SpecError, parse_spec
from mili_testing import free_port, stop_process, wait_until

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
    binary = Path(sys.executable).with_name("vllm-router")
    if not binary.exists():
        pytest.skip("vllm-router is not installed")
    help_text = subprocess.run([binary, "--help"], capture_output=True, text=True, check=True).stdout
    for spec, kv_workers in (
        (parse_spec("chat", {"apiKeySecretRef": {"name": "keys", "key": "chat"}}), ()),
        (parse_spec("chat", {"router": {"policy": "kv_aware"}}), ("10.0.0.7",)),
    ):
        args = router_args(spec, "ns", kv_workers)
        for flag in (arg for arg in args if arg.startswith("--")):
            assert flag in help_text, f"vllm-router has no {flag}: {shlex.join(args)}"
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


def pod(ip: str, deployment: str = "chat", ready: str = "True", **metadata) -> dict:
    labels = {**selector_labels(deployment), "pod-template-hash": "abc"}
    return {
        "metadata": {"labels": labels, **metadata},
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": ready}]},
    }


def test_kv_aware_workers_publish_kv_events_on_a_named_port_and_others_do_not():
    kv_aware = parse_spec("chat", {"router": {"policy": "kv_aware"}})
    assert flag_values(worker_args(kv_aware), "--kv-events-endpoint") == [f"tcp://*:{KV_EVENTS_PORT}"]
    assert flag_values(worker_args(kv_aware), "--kv-events-replay-endpoint") == [f"tcp://*:{KV_REPLAY_PORT}"]
    (container,) = render_deployment(kv_aware, "ns", 1, "w:1")["spec"]["template"]["spec"]["containers"]
    assert {"name": "kv-events", "containerPort": KV_EVENTS_PORT, "protocol": "TCP"} in container["ports"]
    assert {"name": "kv-replay", "containerPort": KV_REPLAY_PORT, "protocol": "TCP"} in container["ports"]
    for spec in (
        parse_spec("chat", {}),
        parse_spec("chat", {"router": {"enabled": False, "policy": "kv_aware"}}),
    ):
        assert not {"--kv-events-endpoint", "--kv-events-replay-endpoint"} & set(worker_args(spec))


def test_a_kv_aware_router_subscribes_to_every_ready_worker_it_is_told():
    spec = parse_spec("chat", {"model": {"servedName": "qwen"}, "router": {"policy": "kv_aware"}})
    args = router_args(spec, "ns", ["10.0.0.7", "10.0.0.9"])
    assert "--service-discovery" not in args and "--selector" not in args
    assert flag_values(args, "--worker-urls") == ["http://10.0.0.7:8000", "http://10.0.0.9:8000"]
    sources = [args[i + 1] for i, arg in enumerate(args) if arg == "--kv-event-source"]
    assert sources == [
        f"http://10.0.0.7:8000=tcp://10.0.0.7:{KV_EVENTS_PORT}",
        f"http://10.0.0.9:8000=tcp://10.0.0.9:{KV_EVENTS_PORT}",
    ]
    replays = [args[i + 1] for i, arg in enumerate(args) if arg == "--kv-event-replay-source"]
    assert replays == [
        f"http://10.0.0.7:8000=tcp://10.0.0.7:{KV_REPLAY_PORT}",
        f"http://10.0.0.9:8000=tcp://10.0.0.9:{KV_REPLAY_PORT}",
    ]
    assert flag_values(args, "--kv-event-block-size") == [str(spec.engine.block_size)]
    assert flag_values(args, "--kv-event-model") == ["qwen"]  # the name the workers serve and clients send
    at_zero = router_args(spec, "ns", [])
    assert "--worker-urls" not in at_zero and "--kv-event-source" not in at_zero


def test_only_ready_live_pods_of_this_deployment_are_kv_aware_workers():
    pods = [
        pod("10.0.0.9"),
        pod("10.0.0.7"),
        pod("10.0.0.7"),  # listed twice
        pod("10.0.0.8", ready="False"),
        pod("10.0.0.6", deletionTimestamp="2026-01-01T00:00:00Z"),
        pod("10.0.0.5", deployment="other"),
        {"metadata": {"labels": selector_labels("chat")}, "status": {}},  # scheduled, no IP yet
    ]
    assert ready_worker_ips(pods, "chat") == ["10.0.0.7", "10.0.0.9"]


def test_the_network_policy_lets_only_the_router_reach_the_kv_event_publishers():
    spec = parse_spec("chat", {"router": {"policy": "kv_aware"}})
    router_pod_labels = render_router_deployment(spec, "ns", IMAGE)["spec"]["template"]["metadata"]["labels"]
    rules = render_network_policy(spec, "ns", "mili-system")["spec"]["ingress"]
    (kv_rule,) = [rule for rule in rules if {"protocol": "TCP", "port": "kv-events"} in rule["ports"]]
    assert {"protocol": "TCP", "port": "kv-replay"} in kv_rule["ports"]
    (peer,) = kv_rule["from"]
    assert peer["podSelector"]["matchLabels"].items() <= router_pod_labels.items()
    default_rules = render_network_policy(parse_spec("chat", {}), "ns", "mili-system")["spec"]["ingress"]
    assert all(port["port"] == "http" for rule in default_rules for port in rule["ports"])


def test_kv_aware_without_prefix_caching_is_refused():
    with pytest.raises(SpecError) as caught:
        parse_spec("chat", {"router": {"policy": "kv_aware"}, "engine": {"prefixCaching": False}})
    assert caught.value.field == "spec.router.policy" and "prefixCaching" in str(caught.value)


def replace_flag(args: list[str], flag: str, value: str) -> list[str]:
    at = args.index(flag)
    return [*args[: at + 1], value, *args[at + 2 :]]


def test_the_rendered_kv_aware_arguments_pass_vllm_routers_own_validation(tmp_path):
    binary = Path(sys.executable).with_name("vllm-router")
    if not binary.exists():
        pytest.skip("vllm-router is not installed")
    args = router_args(parse_spec("chat", {"router": {"policy": "kv_aware"}}), "ns", ["127.0.0.9"])
    for flag in ("--host", "--prometheus-host"):  # listen on loopback, on free ports
        args = replace_flag(args, flag, "127.0.0.1")
    for flag in ("--port", "--prometheus-port"):
        args = replace_flag(args, flag, str(free_port()))
    log = tmp_path / "router.log"
    with log.open("wb") as sink:
        process = subprocess.Popen([str(binary), *args], stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_until(
            lambda: "Starting router on" in log.read_text() or process.poll() is not None,
            "vllm-router to start",
        )
        text = log.read_text()
        assert process.poll() is None and "validation failed" not in text.lower(), text
        assert f"tcp://127.0.0.9:{KV_EVENTS_PORT}" in text  # its kv_aware policy took the static source
    finally:
        stop_process(process)
