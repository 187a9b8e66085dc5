"""The MILI worker: engine, models, tokenizer, OpenAI-compatible server, metrics and CLI.

The public names load lazily, so that torch-free modules (``mili.worker.model_source``, used by the
operator) can be imported without pulling in torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mili.worker.config import EngineConfig
    from mili.worker.engine.outputs import CompletionOutput, RequestOutput
    from mili.worker.llm import LLM
    from mili.worker.sampling_params import SamplingParams

_EXPORTS = {
    "LLM": "mili.worker.llm",
    "CompletionOutput": "mili.worker.engine.outputs",
    "EngineConfig": "mili.worker.config",
    "RequestOutput": "mili.worker.engine.outputs",
    "SamplingParams": "mili.worker.sampling_params",
}

__all__ = ["LLM", "CompletionOutput", "EngineConfig", "RequestOutput", "SamplingParams"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mili.worker' has no attribute {name!r}")
