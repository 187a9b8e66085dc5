"""CPU features: bf16 is the CPU default only where the CPU multiplies bf16 natively."""

from __future__ import annotations

import os

import torch

from mili.kernels.cpu_build import X86_64_LEVELS, host_levels
from mili.kernels.cpu_features import cpu_flags
from mili.worker.engine import cpu_info, model_runner
from mili.worker.engine.cpu_info import cgroup_cpu_limit, engine_threads, physical_cores

SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
ZEN3 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n"


def test_flags_are_read_from_the_first_processor():
    assert {"amx_bf16", "avx512_bf16"} <= cpu_flags(SAPPHIRE_RAPIDS)
    assert "avx2" in cpu_flags(ZEN3) and not cpu_flags(ZEN3) & cpu_info.BF16_FLAGS
    assert cpu_flags("") == frozenset()


def test_kernel_levels_follow_the_flags():
    avx512 = "avx512f avx512bw avx512cd avx512dq avx512vl avx2 fma f16c bmi1 bmi2 movbe abm"
    assert [level.name for level in host_levels(frozenset(avx512.split()), "x86_64")] == [
        "avx512",
        "avx2",
        "generic",
    ]
    assert [level.name for level in host_levels(frozenset({*avx512.split(), "avx512_bf16"}), "x86_64")] == [
        "avx512bf16",
        "avx512",
        "avx2",
        "generic",
    ]
    assert [level.name for level in host_levels(cpu_flags(ZEN3), "x86_64")] == ["generic"]
    assert [level.name for level in host_levels(frozenset(), "aarch64")] == ["generic"]
    assert len({level.namespace for level in X86_64_LEVELS}) == len(X86_64_LEVELS)


def test_auto_dtype_on_cpu_follows_native_bf16(monkeypatch, tiny_qwen3_dir):
    from mili.worker.models.model_config import ModelConfig

    config = ModelConfig.from_dir(tiny_qwen3_dir)
    cpu = torch.device("cpu")
    for native, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(model_runner, "has_native_bf16", lambda native=native: native)
        assert model_runner.resolve_dtype("auto", config, cpu) == expected
    assert model_runner.resolve_dtype("float16", config, cpu) == torch.float16


def test_physical_cores_counts_each_core_once():
    visible = physical_cores()
    assert 1 <= visible <= len(os.sched_getaffinity(0))
    assert physical_cores({0}) == 1


def test_cgroup_v2_cpu_max_is_the_limit(tmp_path):
    (tmp_path / "proc").write_text("0::/kubepods/pod1/worker\n")
    pod = tmp_path / "cg" / "kubepods" / "pod1" / "worker"
    pod.mkdir(parents=True)
    (pod / "cpu.max").write_text("250000 100000\n")
    assert cgroup_cpu_limit(tmp_path / "cg", tmp_path / "proc") == 2.5
    (pod / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path / "cg", tmp_path / "proc") is None


def test_cgroup_v1_cfs_quota_is_the_limit_and_minus_one_is_none(tmp_path):
    (tmp_path / "proc").write_text("4:memory:/x\n2:cpu,cpuacct:/\n")
    mount = tmp_path / "cg" / "cpu,cpuacct"
    mount.mkdir(parents=True)
    (mount / "cpu.cfs_period_us").write_text("100000\n")
    (mount / "cpu.cfs_quota_us").write_text("200000\n")
    assert cgroup_cpu_limit(tmp_path / "cg", tmp_path / "proc") == 2.0
    (mount / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(tmp_path / "cg", tmp_path / "proc") is None


def test_no_cgroup_files_means_no_limit(tmp_path):
    assert cgroup_cpu_limit(tmp_path / "none", tmp_path / "missing") is None


def test_engine_threads_are_capped_by_the_limit(monkeypatch):
    monkeypatch.setattr(cpu_info, "physical_cores", lambda: 8)
    for limit, expected in ((None, 8), (2.5, 2), (0.5, 1), (16.0, 8)):
        monkeypatch.setattr(cpu_info, "cgroup_cpu_limit", lambda limit=limit: limit)
        assert engine_threads() == expected
