"""Session-wide fixtures: tiny random checkpoints, built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from mili_testing.tiny_models import build_tiny_model

ARCHITECTURES = ("Qwen3ForCausalLM", "Qwen2ForCausalLM", "LlamaForCausalLM")


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny random float32 checkpoint (with tokenizer and chat template) per architecture."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {arch: build_tiny_model(root / arch, arch) for arch in ARCHITECTURES}


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tiny_model_dirs: dict[str, Path]) -> Path:
    return tiny_model_dirs["Qwen3ForCausalLM"]


@pytest.fixture(scope="session")
def cpu_kernels_built() -> list[Path]:
    """The C++ CPU kernels' libraries (one per instruction-set level), built once into the cache
    (`make venv` builds them already)."""
    from mili.kernels.cpu_build import CpuKernelBuildError, build
    from mili_testing import CI_STRICT

    try:
        return build()
    except CpuKernelBuildError as exc:
        if CI_STRICT:
            pytest.fail(f"{exc} (MILI_CI_STRICT=1: make venv should have built them)")
        pytest.skip(str(exc))
