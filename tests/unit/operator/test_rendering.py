"""Rendering the worker Deployment and Service from a spec (pure functions, no cluster)."""

from __future__ import annotations

from typing import Any

import pytest

from mili.operator.rendering import (
    endpoint_url,
    render_deployment,
    render_service,
    selector_labels,
    selector_string,
    worker_args,
)
from mili.operator.spec import parse_spec

IMAGE = "mili-worker:test"


def deployment_for(raw: dict[str, Any], replicas: int | None = 1) -> dict[str, Any]:
    return render_deployment(parse_spec("chat", raw), "ns", replicas, IMAGE)


def flag_value(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def test_default_spec_renders_the_vllm_like_serve_command():
    assert worker_args(parse_spec("chat", {})) == [
        "serve",
        "--host", "0.0.0.0",
        "--port", "8000",
        "--model", "builtin:smollm2-135m-instruct",
        "--served-name", "chat",
        "--dtype", "auto",
        "--kernels", "auto",
        "--block-size", "16",
        "--gpu-memory-utilization", "0.9",
        "--max-num-seqs", "256",
        "--max-num-batched-tokens", "8192",
        "--shutdown-timeout", "30",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "present", "absent"),
    [
        ({"model": {"maxModelLen": 4096}}, ["--max-model-len", "4096"], []),
        ({}, [], ["--max-model-len", "--no-prefix-caching"]),
        ({"engine": {"prefixCaching": False}}, ["--no-prefix-caching"], []),
        ({"engine": {"gpuMemoryUtilization": 0.85, "kernels": "torch"}}, ["0.85", "torch"], []),
        ({"model": {"source": "hf://Qwen/Qwen3-0.6B@main", "servedName": "Qwen/Qwen3-0.6B"}},
         ["hf://Qwen/Qwen3-0.6B@main", "Qwen/Qwen3-0.6B"], []),
        ({"model": {"source": "pvc://weights/qwen3"}}, ["file:///models/qwen3"], ["pvc://weights/qwen3"]),
        ({"model": {"source": "pvc://weights"}}, ["file:///models"], []),
    ],
)  # fmt: skip
def test_spec_fields_become_serve_flags(raw, present, absent):
    args = worker_args(parse_spec("chat", raw))
    for item in present:
        assert item in args
    for item in absent:
        assert item not in args


def test_gpu_count_becomes_an_nvidia_limit_and_cpu_memory_requests():
    resources = container(deployment_for({"resources": {"gpus": 2, "cpu": "8", "memory": "32Gi"}}))[
        "resources"
    ]
    assert resources == {
        "requests": {"cpu": "8", "memory": "32Gi", "ephemeral-storage": "22Gi"},
        "limits": {"memory": "32Gi", "nvidia.com/gpu": "2"},
    }


def test_cpu_workers_ask_for_no_gpu():
    assert "nvidia.com/gpu" not in str(container(deployment_for({"resources": {"gpus": 0}})))


def test_probes_use_ready_health_and_a_startup_budget_for_model_load():
    worker = container(deployment_for({}))
    assert worker["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert worker["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    startup = worker["startupProbe"]
    assert startup["httpGet"]["path"] == "/health"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 20 * 60, "model download + warm-up"


def test_pvc_source_mounts_the_claim_read_only():
    deployment = deployment_for({"model": {"source": "pvc://weights/qwen3"}})
    pod = deployment["spec"]["template"]["spec"]
    assert {"name": "model", "persistentVolumeClaim": {"claimName": "weights", "readOnly": True}} in pod[
        "volumes"
    ]
    assert {"name": "model", "mountPath": "/models", "readOnly": True} in container(deployment)[
        "volumeMounts"
    ]


def test_other_sources_mount_only_the_model_cache_and_scratch_space():
    deployment = deployment_for({"model": {"source": "hf://Qwen/Qwen3-0.6B"}})
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert [v["name"] for v in volumes] == ["model-cache", "tmp", "home"]
    env = {e["name"]: e.get("value") for e in container(deployment)["env"]}
    assert env["MILI_CACHE_DIR"] == "/var/cache/mili"


def test_api_key_comes_from_the_secret():
    env = container(deployment_for({"apiKeySecretRef": {"name": "keys", "key": "token"}}))["env"]
    assert {"name": "MILI_API_KEY", "valueFrom": {"secretKeyRef": {"name": "keys", "key": "token"}}} in env
    assert "MILI_API_KEY" not in str(container(deployment_for({}))["env"])


def test_pods_run_as_non_root_without_privileges():
    deployment = deployment_for({})
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert container(deployment)["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert pod["enableServiceLinks"] is False
    assert pod["automountServiceAccountToken"] is False


def test_a_read_only_root_gets_size_limited_scratch_space_and_home():
    deployment = deployment_for({"resources": {"modelCache": "50Gi"}})
    pod = deployment["spec"]["template"]["spec"]
    limits = {v["name"]: v["emptyDir"]["sizeLimit"] for v in pod["volumes"]}
    assert limits == {"model-cache": "50Gi", "tmp": "1Gi", "home": "1Gi"}
    mounts = {m["mountPath"] for m in container(deployment)["volumeMounts"]}
    assert {"/tmp", "/home/mili", "/var/cache/mili"} <= mounts
    env = {e["name"]: e.get("value") for e in container(deployment)["env"]}
    assert env["HOME"] == "/home/mili"
    assert container(deployment)["resources"]["requests"]["ephemeral-storage"] == "52Gi"


@pytest.mark.parametrize(("timeout", "grace"), [(None, 45), (120, 135)])
def test_the_grace_period_outlasts_the_prestop_wait_and_the_drain(timeout, grace):
    engine = {} if timeout is None else {"shutdownTimeoutSeconds": timeout}
    deployment = deployment_for({"engine": engine})
    pod = deployment["spec"]["template"]["spec"]
    (sleep, seconds) = container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep == "sleep" and int(seconds) > 0
    drain = int(flag_value(container(deployment)["args"], "--shutdown-timeout"))
    assert drain == (timeout or 30)
    assert pod["terminationGracePeriodSeconds"] == grace > int(seconds) + drain


def test_a_rollout_replaces_pods_in_place_without_a_spare_gpu():
    strategy = deployment_for({})["spec"]["strategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}


def test_pods_carry_prometheus_scrape_annotations_and_the_deployment_label():
    template = deployment_for({})["spec"]["template"]
    assert template["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert template["metadata"]["annotations"]["prometheus.io/port"] == "8000"
    assert template["metadata"]["labels"]["mili.dev/deployment"] == "chat"


def test_selector_matches_the_pod_labels_and_the_scale_selector_string():
    deployment = deployment_for({})
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector == selector_labels("chat")
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert selector_string("chat") == "app.kubernetes.io/name=mili-worker,mili.dev/deployment=chat"


def test_image_node_selector_and_tolerations_pass_through():
    raw = {
        "image": "registry.local/mili-worker:1.2",
        "imagePullPolicy": "Always",
        "nodeSelector": {"gpu": "h200"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }
    deployment = deployment_for(raw)
    pod = deployment["spec"]["template"]["spec"]
    assert (container(deployment)["image"], container(deployment)["imagePullPolicy"]) == (
        raw["image"],
        "Always",
    )
    assert pod["nodeSelector"] == {"gpu": "h200"} and pod["tolerations"] == raw["tolerations"]
    assert container(deployment_for({}))["image"] == IMAGE


def test_replicas_none_leaves_the_field_to_the_autoscaler():
    assert deployment_for({}, replicas=3)["spec"]["replicas"] == 3
    assert "replicas" not in deployment_for({}, replicas=None)["spec"]


def test_service_maps_its_port_to_the_worker_http_port():
    raw = {"service": {"type": "NodePort", "port": 80}, "router": {"enabled": False}}
    service = render_service(parse_spec("chat", raw), "ns")
    assert service["metadata"] == {"name": "chat", "namespace": "ns", "labels": service["metadata"]["labels"]}
    assert service["spec"] == {
        "type": "NodePort",
        "selector": selector_labels("chat"),
        "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
    }
    assert endpoint_url("chat", "ns", 80) == "http://chat.ns.svc:80/v1"


@pytest.mark.parametrize(
    "raw",
    [
        {},
        {"model": {"source": "pvc://weights/q", "dtype": "bfloat16", "maxModelLen": 2048}},
        {
            "engine": {
                "prefixCaching": False,
                "kernels": "torch",
                "blockSize": 32,
                "gpuMemoryUtilization": 0.5,
            }
        },
    ],
)
def test_the_worker_cli_accepts_the_rendered_command(raw):
    from mili.worker.cli import build_parser  # the real `mili` parser: the operator's args must fit it

    spec = parse_spec("chat", raw)
    args = build_parser().parse_args(worker_args(spec))
    assert (args.command, args.served_name, args.port, args.host) == ("serve", "chat", 8000, "0.0.0.0")
    assert (args.dtype, args.max_model_len, args.block_size) == (
        spec.model.dtype,
        spec.model.max_model_len,
        spec.engine.block_size,
    )
    assert (args.prefix_caching, args.kernels) == (spec.engine.prefix_caching, spec.engine.kernels)
    assert args.gpu_memory_utilization == spec.engine.gpu_memory_utilization
    assert (args.max_num_seqs, args.max_num_batched_tokens) == (
        spec.engine.max_num_seqs,
        spec.engine.max_num_batched_tokens,
    )
    assert args.shutdown_timeout == spec.engine.shutdown_timeout_seconds


def test_the_network_policy_lets_in_the_router_the_operator_namespace_and_prometheus():
    from mili.operator.rendering import render_network_policy

    policy = render_network_policy(parse_spec("chat", {}), "ns", "mili-system")
    assert policy["kind"] == "NetworkPolicy" and policy["metadata"]["name"] == "chat"
    assert policy["spec"]["podSelector"] == {"matchLabels": selector_labels("chat")}
    first, *rest = policy["spec"]["ingress"]
    peers = first["from"]
    assert {
        "podSelector": {
            "matchLabels": {"mili.dev/deployment": "chat", "app.kubernetes.io/component": "router"}
        }
    } in peers
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mili-system"}}} in peers
    assert {
        "namespaceSelector": {},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    } in peers
    # The router is the front door: nobody else reaches the workers.
    assert rest == []
    # Without a router the Service's clients reach the workers directly, on the http port only.
    direct = render_network_policy(parse_spec("chat", {"router": {"enabled": False}}), "ns", "mili-system")
    assert direct["spec"]["ingress"][1:] == [{"ports": [{"protocol": "TCP", "port": "http"}]}]
