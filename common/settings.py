"""Every engine and model setting, declared once.

A ``Setting`` names one knob of a worker: its ``EngineConfig`` field, type, range or choices,
default, ``mili serve`` flag, ``MiliDeployment`` field and help. From this one table come

- the CRD's schema of ``spec.model`` and ``spec.engine`` (``crd_properties``; ``make crds`` writes it
  into ``crds/milideployment.yaml`` and a test fails when the checked-in file differs),
- the operator's validation of those fields and the ``mili serve`` arguments it renders,
- the worker's engine flags (``mili.worker.cli``) and ``EngineConfig``'s validation.

So a value the operator accepts is one the worker accepts, and ``engine.blockSize: 24`` is refused
everywhere with the same words. Torch-free: the operator imports it.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mili.common.model_source import DEFAULT_MODEL

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
DEVICE_CHOICES = ("auto", "cpu", "cuda")
KERNEL_CHOICES = ("auto", "cuda", "cpu", "torch")
BLOCK_SIZES = (8, 16, 32, 64, 128)
# vllm-router's policies MILI serves; with kv_aware the workers publish KV events (docs/routing.md).
ROUTER_POLICIES = ("cache_aware", "round_robin", "power_of_two", "random", "kv_aware")

ENGINE_GROUP = "engine"  # flags `_engine_arguments` declares from this table
SERVER_GROUP = "server"  # flags the server argument group of `mili serve` declares itself

# Model sources the CRD admits (the operator parses them fully; see mili.common.model_source).
MODEL_SOURCE_PATTERN = (
    r"^(hf://[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(@[^\s@]+)?"
    r"|pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?(/\S*)?|file:///\S+|builtin:[A-Za-z0-9][A-Za-z0-9._-]*)$"
)


class SettingError(ValueError):
    """A value a setting refuses; ``problem`` reads after the setting's name ("must be ...")."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name} {problem}")
        self.name = name
        self.problem = problem


def _snake(camel: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", camel).lower()


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class Setting:
    """One setting. ``crd`` is its path under ``spec`` (None: worker-only); ``flag`` its `mili serve`
    flag (None: none; a bool defaulting to True is turned off by a ``--no-...`` flag)."""

    name: str  # the EngineConfig field and argparse dest
    type: type
    default: Any
    help: str
    flag: str | None = None
    crd: str | None = None
    choices: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    optional: bool = False  # None is allowed: decided at run time (the default then is None)
    pattern: str | None = None  # a regular expression a string value must match, everywhere
    pattern_meaning: str = ""  # the pattern in words, for errors: "may not contain whitespace"
    admission_pattern: str | None = None  # the CRD's only: the operator and worker parse it fully
    flag_group: str = ENGINE_GROUP
    in_engine_config: bool = True

    @property
    def crd_section(self) -> str | None:
        return self.crd.split(".")[0] if self.crd else None

    @property
    def crd_key(self) -> str | None:
        return self.crd.split(".", 1)[1] if self.crd else None

    @property
    def spec_attribute(self) -> str:
        """The operator's dataclass field for it: ``engine.blockSize`` -> ``block_size``."""
        return _snake(self.crd_key) if self.crd_key else self.name

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is refused ("must be ..."), or None when it is fine."""
        if value is None:
            return None if self.optional else "must be set"
        kind = self._type_problem(value)
        if kind is not None:
            return f"{kind}, got {_show(value)}"
        if self.choices and value not in self.choices:
            return f"must be one of {', '.join(map(str, self.choices))}, got {_show(value)}"
        if self.pattern is not None and not re.match(self.pattern, value):
            return f"{self.pattern_meaning or 'must match ' + self.pattern}, got {_show(value)}"
        return self._range_problem(value)

    def _type_problem(self, value: Any) -> str | None:
        if self.type is bool:
            return None if isinstance(value, bool) else "must be true or false"
        if isinstance(value, bool):
            return f"must be {'an integer' if self.type is int else 'a number'}, not a boolean"
        if self.type is int:
            return None if isinstance(value, int) else "must be an integer"
        if self.type is float:
            if not isinstance(value, (int, float)):
                return "must be a number"
            return None if math.isfinite(value) else "must be a finite number"
        if not isinstance(value, str) or not value.strip():
            return "must be a non-empty string"
        return None

    def _range_problem(self, value: Any) -> str | None:
        low, high = self.minimum, self.maximum
        too_low = low is not None and (value < low or (self.exclusive_minimum and value == low))
        too_high = high is not None and value > high
        if not (too_low or too_high):
            return None
        if low is not None and high is not None:
            return f"must be in {'(' if self.exclusive_minimum else '['}{low:g}, {high:g}], got {value}"
        if low is not None:
            return f"must be {'>' if self.exclusive_minimum else '>='} {low:g}, got {value}"
        return f"must be <= {high:g}, got {value}"

    def check(self, value: Any) -> None:
        """Raise ``SettingError`` naming the setting when ``value`` is refused."""
        problem = self.problem(value)
        if problem is not None:
            raise SettingError(self.name, problem)

    def crd_property(self) -> dict[str, Any]:
        """The OpenAPI v3 schema of the CRD field."""
        schema: dict[str, Any] = {
            "type": {bool: "boolean", int: "integer", float: "number", str: "string"}[self.type]
        }
        if self.default is not None:
            schema["default"] = self.default
        if self.choices:
            schema["enum"] = list(self.choices)
        elif self.type is str:
            schema["minLength"] = 1
        if self.pattern or self.admission_pattern:
            schema["pattern"] = self.pattern or self.admission_pattern
        if self.minimum is not None:
            schema["minimum"] = self.minimum
            if self.exclusive_minimum:
                schema["exclusiveMinimum"] = True
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        schema["description"] = self.help
        return schema

    def flag_arguments(self, value: Any) -> list[str]:
        """What `mili serve` gets for ``value`` (nothing for None or a switch left at its default)."""
        if self.flag is None or value is None:
            return []
        if self.type is bool:
            return [self.flag] if value != self.default else []
        return [self.flag, f"{value:g}" if self.type is float else str(value)]

    def add_argument(self, group: argparse._ArgumentGroup) -> None:
        """Declare the flag on an argparse group. argparse checks only string choices; numbers are
        EngineConfig's to check, so `--block-size 24` gets the message `EngineConfig(block_size=24)` gets."""
        assert self.flag is not None
        if self.type is bool:
            action = "store_false" if self.default else "store_true"
            group.add_argument(self.flag, dest=self.name, action=action, help=self.help)
            return
        shown = (
            f"; one of {', '.join(map(str, self.choices))}" if self.choices and self.type is not str else ""
        )
        shown += f"; default {self.default}" if self.default is not None else ""
        group.add_argument(
            self.flag,
            dest=self.name,
            type=self.type,
            default=self.default,
            choices=self.choices if self.type is str and self.choices else None,
            help=f"{self.help}{shown}",
        )


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "model",
        str,
        DEFAULT_MODEL,
        "hf://ORG/NAME[@REV], pvc://CLAIM/PATH, file:///PATH or builtin:NAME (or, for the worker, a path)",
        flag="--model",
        crd="model.source",
        admission_pattern=MODEL_SOURCE_PATTERN,
    ),
    Setting(
        "served_name",
        str,
        None,
        "model name in the OpenAI API (default: the MiliDeployment's name; the worker's: the source)",
        flag="--served-name",
        crd="model.servedName",
        optional=True,
        pattern=r"^\S+$",
        pattern_meaning="may not contain whitespace",
        flag_group=SERVER_GROUP,
    ),
    Setting(
        "dtype",
        str,
        "auto",
        "weights and activations dtype (auto: the checkpoint's on GPU, the CPU default on CPU)",
        flag="--dtype",
        crd="model.dtype",
        choices=DTYPE_CHOICES,
    ),
    Setting(
        "max_model_len",
        int,
        None,
        "context length (default: the model's, capped by what the KV pool holds)",
        flag="--max-model-len",
        crd="model.maxModelLen",
        minimum=1,
        optional=True,
    ),
    Setting("device", str, "auto", "where the engine runs", flag="--device", choices=DEVICE_CHOICES),
    Setting(
        "kernels",
        str,
        "auto",
        "kernel backend (auto: cuda when a GPU is there)",
        flag="--kernels",
        crd="engine.kernels",
        choices=KERNEL_CHOICES,
    ),
    Setting(
        "block_size",
        int,
        16,
        "tokens per KV-cache block",
        flag="--block-size",
        crd="engine.blockSize",
        choices=BLOCK_SIZES,
    ),
    Setting(
        "gpu_memory_utilization",
        float,
        0.9,
        "share of GPU memory the engine may use (weights, activations, KV cache)",
        flag="--gpu-memory-utilization",
        crd="engine.gpuMemoryUtilization",
        minimum=0,
        maximum=1,
        exclusive_minimum=True,
    ),
    Setting(
        "max_num_seqs",
        int,
        256,
        "most sequences in one batch",
        flag="--max-num-seqs",
        crd="engine.maxNumSeqs",
        minimum=1,
    ),
    Setting(
        "max_num_batched_tokens",
        int,
        8192,
        "token budget of one engine step",
        flag="--max-num-batched-tokens",
        crd="engine.maxNumBatchedTokens",
        minimum=1,
    ),
    Setting(
        "prefix_caching",
        bool,
        True,
        "share KV blocks of common prompt prefixes (radix prefix cache)",
        flag="--no-prefix-caching",
        crd="engine.prefixCaching",
    ),
    Setting(
        "shutdown_timeout_seconds",
        int,
        30,
        "on SIGTERM, seconds in-flight requests may take to finish before they are aborted",
        flag="--shutdown-timeout",
        crd="engine.shutdownTimeoutSeconds",
        minimum=1,
        maximum=3600,
        flag_group=SERVER_GROUP,
        in_engine_config=False,
    ),
    Setting(
        "num_kv_blocks",
        int,
        None,
        "fix the KV pool size in blocks (default: sized from memory)",
        flag="--num-kv-blocks",
        minimum=1,
        optional=True,
    ),
    Setting(
        "enforce_eager",
        bool,
        False,
        "run every decode step eagerly (no CUDA graphs)",
        flag="--enforce-eager",
        crd="engine.enforceEager",
    ),
    Setting(
        "kv_events_endpoint",
        str,
        None,
        "publish KV-cache events (vLLM's wire format, ZMQ PUB) on this address, e.g. tcp://*:5557",
        flag="--kv-events-endpoint",
        optional=True,
    ),
    Setting(
        "kv_events_replay_endpoint",
        str,
        None,
        "resend missed KV-event batches on request on this address (vLLM's replay, ZMQ ROUTER),"
        " e.g. tcp://*:5558; needs --kv-events-endpoint",
        flag="--kv-events-replay-endpoint",
        optional=True,
    ),
    Setting(
        "cpu_kv_cache_bytes",
        int,
        512 * 2**20,
        "KV pool size on CPU, in bytes",
        flag="--cpu-kv-cache-bytes",
        minimum=1,
    ),
    Setting(
        "cpu_threads",
        int,
        None,
        "threads of the CPU engine (default: one per physical core, within the container's CPU limit)",
        flag="--cpu-threads",
        minimum=1,
        optional=True,
    ),
    Setting("seed", int, 0, "random seed of sampling", flag="--seed", minimum=0),
    # spec.router: the vllm-router Deployment in front of the workers (mili.operator.router).
    Setting(
        "router_enabled",
        bool,
        True,
        "run a cache-aware router in front of the workers (false: the Service selects the workers)",
        crd="router.enabled",
        in_engine_config=False,
    ),
    Setting(
        "router_replicas",
        int,
        1,
        "router pods (each keeps its own view of the workers' caches)",
        crd="router.replicas",
        minimum=1,
        maximum=16,
        in_engine_config=False,
    ),
    Setting(
        "router_policy",
        str,
        "cache_aware",
        "how the router picks a worker (vllm-router's --policy)",
        crd="router.policy",
        choices=ROUTER_POLICIES,
        in_engine_config=False,
    ),
)

BY_NAME = {setting.name: setting for setting in SETTINGS}


def default(name: str) -> Any:
    """The declared default of one setting (what dataclass fields use)."""
    return BY_NAME[name].default


def in_section(section: str) -> tuple[Setting, ...]:
    """The settings under ``spec.SECTION`` of a MiliDeployment (``model``, ``engine`` or ``router``)."""
    return tuple(s for s in SETTINGS if s.crd_section == section)


def crd_settings() -> tuple[Setting, ...]:
    return tuple(s for s in SETTINGS if s.crd is not None)


def worker_settings() -> tuple[Setting, ...]:
    """The CRD settings that become `mili serve` flags (``spec.model`` and ``spec.engine``)."""
    return tuple(s for s in crd_settings() if s.flag is not None)


def engine_flags() -> tuple[Setting, ...]:
    """The settings whose flags `_engine_arguments` declares."""
    return tuple(s for s in SETTINGS if s.flag is not None and s.flag_group == ENGINE_GROUP)


def engine_config_settings() -> tuple[Setting, ...]:
    return tuple(s for s in SETTINGS if s.in_engine_config)


def crd_properties(section: str) -> dict[str, Any]:
    """The CRD's ``properties`` of ``spec.SECTION``, in declaration order."""
    return {setting.crd_key: setting.crd_property() for setting in in_section(section)}


def check_all(values: Any, settings: Iterable[Setting]) -> None:
    """Check ``getattr(values, setting.name)`` for each setting (EngineConfig's validation)."""
    for setting in settings:
        setting.check(getattr(values, setting.name))
