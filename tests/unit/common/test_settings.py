"""The settings declaration: the CRD, the operator and the worker accept and refuse the same values."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from mili.common import settings
from mili.operator.spec import EngineSpec, ModelSpec, RouterSpec, SpecError, parse_spec
from mili.worker.cli import main as mili_main
from mili.worker.config import EngineConfig

ROOT = Path(__file__).resolve().parents[3]
SPEC_CLASSES = {"model": ModelSpec, "engine": EngineSpec, "router": RouterSpec}

# Per CRD setting: values to try (some good, some bad); the verdicts must agree everywhere.
PROBES = {
    "model": ["builtin:x", "hf://Qwen/Qwen3-0.6B", "", 7],
    "served_name": ["qwen", "has space", "", 3],
    "dtype": ["auto", "bfloat16", "int4", 16],
    "max_model_len": [1, 4096, 0, -3, 2.5, True],
    "kernels": ["auto", "torch", "cuda", "triton"],
    "block_size": [8, 16, 128, 24, 0, 4096, "16", 16.0],
    "gpu_memory_utilization": [0.5, 1, 1.0, 0, 0.0, 1.5, float("inf"), float("nan"), "0.9"],
    "max_num_seqs": [1, 256, 0, -1, 1.5],
    "max_num_batched_tokens": [1, 8192, 0],
    "prefix_caching": [True, False, "yes", 1],
    "enforce_eager": [True, False, "no", 0],
    "shutdown_timeout_seconds": [1, 30, 3600, 0, 3601],
    "router_enabled": [True, False, "no", 0],
    "router_replicas": [1, 16, 0, 17, 2.0],
    "router_policy": ["cache_aware", "round_robin", "power_of_two", "random", "kv_aware", "least_load"],
}


def test_every_crd_setting_is_probed():
    assert set(PROBES) == {s.name for s in settings.crd_settings()}


def test_engine_config_has_one_field_per_declared_setting_with_its_default():
    fields = {f.name: f.default for f in dataclasses.fields(EngineConfig)}
    assert fields == {s.name: s.default for s in settings.engine_config_settings()}


@pytest.mark.parametrize("section", sorted(SPEC_CLASSES))
def test_the_operator_spec_has_one_field_per_setting_of_its_section(section):
    fields = [f.name for f in dataclasses.fields(SPEC_CLASSES[section])]
    assert fields == [s.spec_attribute for s in settings.in_section(section)]


def test_the_kernel_choices_are_the_kernel_packages():
    from mili.kernels import KERNEL_CHOICES

    assert settings.KERNEL_CHOICES == KERNEL_CHOICES


def _crd_spec_schema() -> dict:
    crd = yaml.safe_load((ROOT / "crds" / "milideployment.yaml").read_text())
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def _cases():
    for setting in settings.crd_settings():
        for value in PROBES[setting.name]:
            yield pytest.param(setting, value, id=f"{setting.name}={value!r}")


@pytest.mark.parametrize(("setting", "value"), list(_cases()))
def test_operator_worker_and_crd_agree_on_each_value(setting, value):
    raw = {setting.crd_section: {setting.crd_key: value}}
    if setting.name == "max_num_batched_tokens":  # keep the cross-field rule out of the way
        raw["engine"]["maxNumSeqs"] = 1
    try:
        parse_spec("chat", raw)
        operator_error = None
    except SpecError as error:
        operator_error = error

    problem = setting.problem(value)
    if setting.name != "model":  # the operator parses sources further (see test_spec.py)
        assert (operator_error is None) == (problem is None), (operator_error, problem)
    if operator_error is not None and problem is not None:
        assert operator_error.field == f"spec.{setting.crd}" and operator_error.message == problem

    if setting.in_engine_config:
        try:
            EngineConfig(**{setting.name: value})
            worker_error = None
        except ValueError as error:
            worker_error = error
        assert (worker_error is None) == (problem is None)
        if worker_error is not None:
            assert str(worker_error) == f"{setting.name} {problem}"

    if isinstance(value, float) and value != value:  # NaN: JSON (and so the API server) has no NaN
        return
    schema_errors = list(jsonschema.Draft4Validator(_crd_spec_schema()).iter_errors({"spec": raw}))
    if problem is None:
        assert not schema_errors, schema_errors
    elif setting.name not in ("model",) and not (isinstance(value, float) and value in (float("inf"),)):
        assert schema_errors, f"the CRD admits {value!r} for spec.{setting.crd}"


def test_block_size_24_is_refused_by_the_crd_the_operator_and_the_worker(capsys):
    raw = {"engine": {"blockSize": 24}}
    assert list(jsonschema.Draft4Validator(_crd_spec_schema()).iter_errors({"spec": raw}))
    with pytest.raises(SpecError) as caught:
        parse_spec("chat", raw)
    assert str(caught.value) == "spec.engine.blockSize: must be one of 8, 16, 32, 64, 128, got 24"
    assert mili_main(["serve", "--block-size", "24"]) == 2
    assert "block_size must be one of 8, 16, 32, 64, 128, got 24" in capsys.readouterr().err


def test_the_worker_flags_are_the_declared_ones():
    from mili.worker.cli import build_parser

    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    flags = {option for action in serve._actions for option in action.option_strings}
    declared = {s.flag for s in settings.SETTINGS if s.flag}
    assert declared <= flags, declared - flags
    assert all(re.fullmatch(r"--[a-z][a-z-]*", flag) for flag in declared)


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        (
            {"kv_events_endpoint": "tcp://*:5557", "prefix_caching": False},
            "kv_events_endpoint needs prefix_caching",
        ),
        ({"kv_events_replay_endpoint": "tcp://*:5558"}, "kv_events_replay_endpoint needs kv_events_endpoint"),
    ],
)
def test_engine_config_refuses_kv_event_settings_that_need_another(fields, problem):
    with pytest.raises(ValueError, match=problem):
        EngineConfig(**fields)
    EngineConfig(kv_events_endpoint="tcp://*:5557", kv_events_replay_endpoint="tcp://*:5558")


def test_every_serve_flag_is_in_the_servers_flag_table():
    table = (ROOT / "docs" / "server.md").read_text().split("## Flags", 1)[1].split("\n## ", 1)[0]
    flags = [s.flag for s in settings.SETTINGS if s.flag is not None]
    assert [flag for flag in flags if f"`{flag}" not in table] == []
