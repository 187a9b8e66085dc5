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
