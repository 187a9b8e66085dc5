"""MiliDeployment spec: parsing and validation into plain, frozen dataclasses.

The CRD schema refuses what a schema can say; this module re-checks everything (an API server
without the schema, e.g. an emulator, or an old CRD, must not crash the operator) and adds the
cross-field rules a schema cannot express. Every error names the field it is about.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mili.common import model_source as common_model_source
from mili.common import settings
from mili.common.model_source import ModelSource
from mili.common.settings import default

GROUP = "mili.dev"
VERSION = "v1alpha1"
PLURAL = "milideployments"
KIND = "MiliDeployment"

DEFAULT_MODEL_CACHE = "20Gi"
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")

_DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


class SpecError(ValueError):
    """A spec that cannot be served; ``field`` is the dotted path, e.g. ``spec.model.source``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class ModelSpec:
    """``spec.model``: one field per setting of ``mili.common.settings`` in that section."""

    source: ModelSource
    served_name: str
    dtype: str = default("dtype")
    max_model_len: int | None = default("max_model_len")


@dataclass(frozen=True)
class EngineSpec:
    """``spec.engine``: one field per setting of ``mili.common.settings`` in that section."""

    kernels: str = default("kernels")
    block_size: int = default("block_size")
    gpu_memory_utilization: float = default("gpu_memory_utilization")
    max_num_seqs: int = default("max_num_seqs")
    max_num_batched_tokens: int = default("max_num_batched_tokens")
    prefix_caching: bool = default("prefix_caching")
    shutdown_timeout_seconds: int = default("shutdown_timeout_seconds")
    enforce_eager: bool = default("enforce_eager")


@dataclass(frozen=True)
class RouterSpec:
    """``spec.router``: one field per setting of ``mili.common.settings`` in that section."""

    enabled: bool = default("router_enabled")
    replicas: int = default("router_replicas")
    policy: str = default("router_policy")


@dataclass(frozen=True)
class ResourcesSpec:
    gpus: int = 1
    cpu: str | None = None
    memory: str | None = None
    model_cache: str = DEFAULT_MODEL_CACHE  # sizeLimit of the model-cache emptyDir


@dataclass(frozen=True)
class AutoscalingSpec:
    enabled: bool = False
    min_replicas: int = 1
    max_replicas: int | None = None
    target_kv_cache_usage: float = 0.7
    target_queue_length: float = 4.0
    interval_seconds: int = 15
    scale_up_stabilization_seconds: int = 0
    scale_down_stabilization_seconds: int = 300
    prometheus_url: str | None = None
    cold_start_timeout_seconds: int = 300  # how long a request at zero replicas may wait for a worker

    def clamp(self, replicas: int) -> int:
        """``replicas`` within [minReplicas, maxReplicas]."""
        upper = self.max_replicas if self.max_replicas is not None else replicas
        return max(self.min_replicas, min(replicas, upper))


@dataclass(frozen=True)
class ServiceSpec:
    type: str = "ClusterIP"
    port: int = 8000


@dataclass(frozen=True)
class SecretKeyRef:
    name: str
    key: str


@dataclass(frozen=True)
class MiliDeploymentSpec:
    """The whole validated spec of one MiliDeployment."""

    name: str
    model: ModelSpec
    engine: EngineSpec = field(default_factory=EngineSpec)
    replicas: int = 1
    image: str | None = None
    image_pull_policy: str | None = None
    resources: ResourcesSpec = field(default_factory=ResourcesSpec)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    autoscaling: AutoscalingSpec = field(default_factory=AutoscalingSpec)
    service: ServiceSpec = field(default_factory=ServiceSpec)
    api_key_secret_ref: SecretKeyRef | None = None
    router: RouterSpec = field(default_factory=RouterSpec)


class _Fields:
    """Reads typed values out of one mapping of the spec, naming the full path in every error."""

    def __init__(self, data: Any, path: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise SpecError(path, f"must be an object, got {_show(data)}")
        self.data = data
        self.path = path

    def where(self, key: str) -> str:
        return f"{self.path}.{key}"

    def section(self, key: str) -> _Fields:
        return _Fields(self.data.get(key), self.where(key))

    def setting(self, setting: settings.Setting) -> Any:
        """The value of a declared setting (its default when absent), checked as the worker will."""
        value = self.data.get(setting.crd_key)
        if value is None:
            return setting.default
        problem = setting.problem(value)
        if problem is not None:
            raise SpecError(self.where(setting.crd_key), problem)
        return float(value) if setting.type is float else value

    def settings(self, section: str) -> dict[str, Any]:
        """``{spec attribute: value}`` of the settings of ``spec.SECTION``; unknown keys are refused."""
        declared = settings.in_section(section)
        known = [str(setting.crd_key) for setting in declared]
        for key in self.data:
            if key not in known:
                raise SpecError(self.where(key), f"is not a field of {self.path} (known: {', '.join(known)})")
        return {setting.spec_attribute: self.setting(setting) for setting in declared}

    def string(self, key: str, default: str | None = None, choices: tuple[str, ...] = ()) -> str | None:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, str) or not value.strip():
            raise SpecError(self.where(key), f"must be a non-empty string, got {_show(value)}")
        if choices and value not in choices:
            raise SpecError(self.where(key), f"{value!r} is not one of {', '.join(choices)}")
        return value

    def integer(self, key: str, default: int | None, low: int, high: int | None = None) -> int | None:
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(self.where(key), f"must be an integer, got {_show(value)}")
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f">= {low}"
            raise SpecError(self.where(key), f"must be {bound}, got {value}")
        return value

    def number(self, key: str, default: float, low: float, high: float, low_open: bool = False) -> float:
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(self.where(key), f"must be a number, got {_show(value)}")
        if value > high or value < low or (low_open and value == low):
            bracket = "(" if low_open else "["
            raise SpecError(self.where(key), f"must be in {bracket}{low}, {high}], got {value}")
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise SpecError(self.where(key), f"must be true or false, got {_show(value)}")
        return value

    def quantity(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is None:
            return None
        text = str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value
        if not isinstance(text, str) or not _QUANTITY.match(text):
            raise SpecError(
                self.where(key),
                f"must be a Kubernetes quantity like '4', '500m' or '16Gi', got {_show(value)}",
            )
        return text


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_model_source(uri: str, where: str = "spec.model.source") -> ModelSource:
    """Split a model URI with the worker's own parser; a bare path is refused (a pod has no such path)."""
    try:
        source = common_model_source.parse_model_source(uri)
    except common_model_source.ModelSourceError as error:
        raise SpecError(where, str(error)) from None
    if source.scheme == "path":
        raise SpecError(where, f"{uri!r} is not one of hf://, pvc://, file://, builtin:")
    if source.scheme == "file" and source.location == "/":
        raise SpecError(where, f"{uri!r}: a file source is file:///ABSOLUTE/PATH")
    return source


def parse_spec(name: str, spec: Mapping[str, Any] | None) -> MiliDeploymentSpec:
    """Validate a MiliDeployment's ``spec`` (raw dict, CRD defaults optional) and fill in the defaults."""
    if not is_service_name(name):
        raise SpecError(
            "metadata.name",
            f"{name!r} must be a DNS-1035 label (lower case, starts with a letter, at most 63 characters): "
            "it names the worker Service",
        )
    root = _Fields(spec, "spec")
    model = _parse_model(name, root.section("model"))
    engine = _parse_engine(root.section("engine"))
    resources = _parse_resources(root.section("resources"))
    autoscaling = _parse_autoscaling(root.section("autoscaling"))
    service = root.section("service")

    if engine.kernels == "cuda" and resources.gpus == 0:
        raise SpecError("spec.engine.kernels", "'cuda' needs spec.resources.gpus >= 1")
    router = RouterSpec(**root.section("router").settings("router"))
    if router.enabled and router.policy == "kv_aware" and not engine.prefix_caching:
        raise SpecError(
            "spec.router.policy",
            "'kv_aware' needs spec.engine.prefixCaching: true (workers publish their prefix cache's blocks)",
        )
    if engine.max_num_batched_tokens < engine.max_num_seqs:
        raise SpecError(
            "spec.engine.maxNumBatchedTokens",
            f"must be >= spec.engine.maxNumSeqs ({engine.max_num_seqs}), got {engine.max_num_batched_tokens}",
        )

    return MiliDeploymentSpec(
        name=name,
        model=model,
        engine=engine,
        replicas=root.integer("replicas", 1, 0),
        image=root.string("image"),
        image_pull_policy=root.string("imagePullPolicy", choices=PULL_POLICIES),
        resources=resources,
        node_selector=_parse_node_selector(root),
        tolerations=_parse_tolerations(root),
        autoscaling=autoscaling,
        service=ServiceSpec(
            type=service.string("type", "ClusterIP", SERVICE_TYPES),
            port=service.integer("port", 8000, 1, 65535),
        ),
        api_key_secret_ref=_parse_secret_ref(root),
        router=router,
    )


def _parse_model(name: str, model: _Fields) -> ModelSpec:
    values = model.settings("model")
    source = parse_model_source(values.pop("source"), model.where("source"))
    if values["served_name"] is None:
        values["served_name"] = name
    return ModelSpec(source=source, **values)


def _parse_engine(engine: _Fields) -> EngineSpec:
    return EngineSpec(**engine.settings("engine"))


def _parse_resources(resources: _Fields) -> ResourcesSpec:
    return ResourcesSpec(
        gpus=resources.integer("gpus", 1, 0, 64),
        cpu=resources.quantity("cpu"),
        memory=resources.quantity("memory"),
        model_cache=resources.quantity("modelCache") or DEFAULT_MODEL_CACHE,
    )


def _parse_autoscaling(autoscaling: _Fields) -> AutoscalingSpec:
    parsed = AutoscalingSpec(
        enabled=autoscaling.boolean("enabled", False),
        min_replicas=autoscaling.integer("minReplicas", 1, 0),
        max_replicas=autoscaling.integer("maxReplicas", None, 1),
        target_kv_cache_usage=autoscaling.number("targetKvCacheUsage", 0.7, 0.0, 1.0, low_open=True),
        target_queue_length=autoscaling.number("targetQueueLength", 4.0, 0.0, 1e6, low_open=True),
        interval_seconds=autoscaling.integer("intervalSeconds", 15, 1, 3600),
        scale_up_stabilization_seconds=autoscaling.integer("scaleUpStabilizationSeconds", 0, 0, 86400),
        scale_down_stabilization_seconds=autoscaling.integer("scaleDownStabilizationSeconds", 300, 0, 86400),
        prometheus_url=autoscaling.string("prometheusUrl"),
        cold_start_timeout_seconds=autoscaling.integer("coldStartTimeoutSeconds", 300, 1, 3600),
    )
    if parsed.prometheus_url is not None and not parsed.prometheus_url.startswith(("http://", "https://")):
        raise SpecError(
            autoscaling.where("prometheusUrl"), f"must be an http(s) URL, got {parsed.prometheus_url!r}"
        )
    if parsed.enabled and parsed.max_replicas is None:
        raise SpecError(autoscaling.where("maxReplicas"), "is required when spec.autoscaling.enabled is true")
    if parsed.max_replicas is not None and parsed.min_replicas > parsed.max_replicas:
        raise SpecError(
            autoscaling.where("minReplicas"),
            f"must be <= spec.autoscaling.maxReplicas ({parsed.max_replicas}), got {parsed.min_replicas}",
        )
    return parsed


def _parse_node_selector(root: _Fields) -> dict[str, str]:
    selector = root.data.get("nodeSelector") or {}
    if not isinstance(selector, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in selector.items()
    ):
        raise SpecError(root.where("nodeSelector"), f"must map label names to strings, got {_show(selector)}")
    return dict(selector)


def _parse_tolerations(root: _Fields) -> tuple[Mapping[str, Any], ...]:
    tolerations = root.data.get("tolerations") or []
    if not isinstance(tolerations, list):
        raise SpecError(root.where("tolerations"), f"must be a list, got {_show(tolerations)}")
    for index, toleration in enumerate(tolerations):
        if not isinstance(toleration, Mapping):
            raise SpecError(
                f"{root.where('tolerations')}[{index}]", f"must be an object, got {_show(toleration)}"
            )
    return tuple(dict(t) for t in tolerations)


def _parse_secret_ref(root: _Fields) -> SecretKeyRef | None:
    if root.data.get("apiKeySecretRef") is None:
        return None
    ref = root.section("apiKeySecretRef")
    name = ref.string("name")
    key = ref.string("key")
    if name is None or not _DNS_SUBDOMAIN.match(name):
        raise SpecError(ref.where("name"), f"must name a Secret (a DNS subdomain), got {_show(name)}")
    if key is None or not _SECRET_KEY.match(key):
        raise SpecError(ref.where("key"), f"must name a key of the Secret, got {_show(key)}")
    return SecretKeyRef(name=name, key=key)


def check_prometheus_url(spec: MiliDeploymentSpec, allowed: Callable[[str], bool]) -> None:
    """Refuse a ``spec.autoscaling.prometheusUrl`` the operator was not told it may query: the operator
    would otherwise send requests wherever any namespace's user points it."""
    url = spec.autoscaling.prometheus_url
    if url is not None and not allowed(url):
        raise SpecError(
            "spec.autoscaling.prometheusUrl",
            f"{url!r} is not one of the operator's --prometheus-url servers (a cluster admin may add it)",
        )


def is_service_name(name: str) -> bool:
    """Whether ``name`` can name a Service (DNS-1035 label, at most 63 characters)."""
    return len(name) <= 63 and bool(_DNS_1035_LABEL.match(name))
