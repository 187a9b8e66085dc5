"""Spec parsing and validation: defaults, good specs, and bad specs whose errors name the field."""

from __future__ import annotations

import pytest

from mili.operator.spec import SpecError, parse_model_source, parse_spec


def test_an_empty_spec_gets_the_documented_defaults():
    spec = parse_spec("chat", {})
    assert spec.model.source.uri == "builtin:smollm2-135m-instruct"
    assert (spec.model.served_name, spec.model.dtype, spec.model.max_model_len) == ("chat", "auto", None)
    engine = spec.engine
    assert (engine.kernels, engine.block_size, engine.gpu_memory_utilization) == ("auto", 16, 0.9)
    assert (engine.max_num_seqs, engine.max_num_batched_tokens, engine.prefix_caching) == (256, 8192, True)
    assert (engine.shutdown_timeout_seconds, spec.resources.model_cache) == (30, "20Gi")
    assert (spec.replicas, spec.resources.gpus, spec.service.type, spec.service.port) == (
        1,
        1,
        "ClusterIP",
        8000,
    )
    scaling = spec.autoscaling
    assert (scaling.enabled, scaling.min_replicas, scaling.max_replicas) == (False, 1, None)
    assert (scaling.target_kv_cache_usage, scaling.target_queue_length, scaling.interval_seconds) == (
        0.7,
        4.0,
        15,
    )
    assert (scaling.scale_up_stabilization_seconds, scaling.scale_down_stabilization_seconds) == (0, 300)
    assert spec.api_key_secret_ref is None and spec.image is None


@pytest.mark.parametrize(
    ("uri", "scheme", "location", "revision", "claim"),
    [
        ("hf://Qwen/Qwen3-0.6B", "hf", "Qwen/Qwen3-0.6B", None, None),
        ("hf://Qwen/Qwen3-0.6B@a1b2c3", "hf", "Qwen/Qwen3-0.6B", "a1b2c3", None),
        ("pvc://models/qwen/qwen3-0.6b", "pvc", "qwen/qwen3-0.6b", None, "models"),
        ("pvc://models", "pvc", "", None, "models"),
        ("file:///opt/models/qwen3", "file", "/opt/models/qwen3", None, None),
        ("builtin:smollm2-135m-instruct", "builtin", "smollm2-135m-instruct", None, None),
    ],
)
def test_model_sources_split_into_their_parts(uri, scheme, location, revision, claim):
    source = parse_model_source(uri)
    assert (source.scheme, source.location, source.revision, source.claim) == (
        scheme,
        location,
        revision,
        claim,
    )


GOOD_SPECS = [
    {"model": {"source": "hf://Qwen/Qwen3-0.6B", "dtype": "bfloat16", "maxModelLen": 8192}},
    {
        "engine": {"kernels": "torch", "prefixCaching": False},
        "resources": {"gpus": 0, "cpu": 2, "memory": "4Gi"},
    },
    {"engine": {"gpuMemoryUtilization": 1}, "resources": {"cpu": "500m"}},
    {"autoscaling": {"enabled": True, "minReplicas": 0, "maxReplicas": 3}},
    {"replicas": 0, "service": {"type": "NodePort", "port": 80}},
    {"apiKeySecretRef": {"name": "keys.example", "key": "api_key"}, "imagePullPolicy": "Always"},
    {"nodeSelector": {"gpu": "h100"}, "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]},
]


@pytest.mark.parametrize("raw", GOOD_SPECS)
def test_good_specs_parse(raw):
    assert parse_spec("chat", raw).name == "chat"


BAD_SPECS = [
    (
        {"model": {"source": "ftp://x/y"}},
        "spec.model.source",
        "unknown scheme; accepted forms: hf://",
    ),
    ({"model": {"source": "hf://just-a-name"}}, "spec.model.source", "hf://ORG/NAME"),
    ({"model": {"source": "hf://Qwen/Qwen3@"}}, "spec.model.source", "revision"),
    ({"model": {"source": "pvc://Bad_Claim/x"}}, "spec.model.source", "PersistentVolumeClaim"),
    ({"model": {"source": "pvc://models/../etc"}}, "spec.model.source", ".."),
    ({"model": {"source": "file://relative"}}, "spec.model.source", "file:///"),
    ({"model": {"source": "builtin:"}}, "spec.model.source", "needs a model name"),
    ({"model": {"source": "models/qwen3"}}, "spec.model.source", "is not one of hf://"),
    ({"model": {"servedName": "has space"}}, "spec.model.servedName", "whitespace"),
    ({"model": {"dtype": "int4"}}, "spec.model.dtype", "must be one of auto, float32, bfloat16, float16"),
    ({"model": {"maxModelLen": 0}}, "spec.model.maxModelLen", ">= 1"),
    ({"model": "hf://Qwen/Qwen3-0.6B"}, "spec.model", "must be an object"),
    (
        {"engine": {"kernels": "triton"}},
        "spec.engine.kernels",
        "must be one of auto, cuda, cpu, torch, got 'triton'",
    ),
    ({"engine": {"blockSize": "16"}}, "spec.engine.blockSize", "must be an integer"),
    ({"engine": {"blockSize": 4096}}, "spec.engine.blockSize", "must be one of 8, 16, 32, 64, 128"),
    ({"engine": {"blockSize": 24}}, "spec.engine.blockSize", "must be one of 8, 16, 32, 64, 128, got 24"),
    ({"engine": {"shutdownTimeoutSeconds": 0}}, "spec.engine.shutdownTimeoutSeconds", "in [1, 3600]"),
    ({"engine": {"maxNumSeqs": 1.5}}, "spec.engine.maxNumSeqs", "must be an integer"),
    ({"engine": {"blocksize": 16}}, "spec.engine.blocksize", "is not a field of spec.engine"),
    ({"model": {"revision": "main"}}, "spec.model.revision", "is not a field of spec.model"),
    ({"resources": {"modelCache": "big"}}, "spec.resources.modelCache", "Kubernetes quantity"),
    ({"engine": {"gpuMemoryUtilization": 0}}, "spec.engine.gpuMemoryUtilization", "(0, 1]"),
    ({"engine": {"gpuMemoryUtilization": 1.5}}, "spec.engine.gpuMemoryUtilization", "(0, 1]"),
    ({"engine": {"prefixCaching": "yes"}}, "spec.engine.prefixCaching", "true or false"),
    (
        {"engine": {"maxNumSeqs": 512, "maxNumBatchedTokens": 256}},
        "spec.engine.maxNumBatchedTokens",
        ">= spec.engine.maxNumSeqs",
    ),
    ({"engine": {"kernels": "cuda"}, "resources": {"gpus": 0}}, "spec.engine.kernels", "resources.gpus >= 1"),
    ({"replicas": -1}, "spec.replicas", ">= 0"),
    ({"replicas": True}, "spec.replicas", "must be an integer"),
    ({"imagePullPolicy": "Sometimes"}, "spec.imagePullPolicy", "is not one of"),
    ({"resources": {"gpus": -1}}, "spec.resources.gpus", "between 0 and 64"),
    ({"resources": {"memory": "lots"}}, "spec.resources.memory", "Kubernetes quantity"),
    ({"nodeSelector": {"gpu": 1}}, "spec.nodeSelector", "strings"),
    ({"tolerations": ["nvidia"]}, "spec.tolerations[0]", "must be an object"),
    ({"autoscaling": {"enabled": True}}, "spec.autoscaling.maxReplicas", "required"),
    (
        {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}},
        "spec.autoscaling.minReplicas",
        "<= spec.autoscaling.maxReplicas",
    ),
    ({"autoscaling": {"targetKvCacheUsage": 0}}, "spec.autoscaling.targetKvCacheUsage", "(0.0, 1.0]"),
    ({"autoscaling": {"intervalSeconds": 0}}, "spec.autoscaling.intervalSeconds", "between 1 and 3600"),
    ({"autoscaling": {"prometheusUrl": "prometheus:9090"}}, "spec.autoscaling.prometheusUrl", "http(s) URL"),
    ({"service": {"type": "ExternalName"}}, "spec.service.type", "is not one of"),
    ({"service": {"port": 70000}}, "spec.service.port", "between 1 and 65535"),
    ({"apiKeySecretRef": {"name": "keys"}}, "spec.apiKeySecretRef.key", "key of the Secret"),
    ({"apiKeySecretRef": {"key": "token"}}, "spec.apiKeySecretRef.name", "must name a Secret"),
]


@pytest.mark.parametrize(("raw", "field", "message"), BAD_SPECS, ids=[f"{f}:{m}" for _, f, m in BAD_SPECS])
def test_bad_specs_are_refused_naming_the_field(raw, field, message):
    with pytest.raises(SpecError) as caught:
        parse_spec("chat", raw)
    assert caught.value.field == field
    assert message in caught.value.message
    assert str(caught.value).startswith(f"{field}: ")


@pytest.mark.parametrize("name", ["9lives", "has.dot", "UPPER", "x" * 64])
def test_names_that_cannot_name_a_service_are_refused(name):
    with pytest.raises(SpecError) as caught:
        parse_spec(name, {})
    assert caught.value.field == "metadata.name"


def test_autoscaling_clamps_to_its_bounds():
    autoscaling = parse_spec(
        "chat", {"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 4}}
    ).autoscaling
    assert [autoscaling.clamp(n) for n in (0, 2, 3, 9)] == [2, 2, 3, 4]
