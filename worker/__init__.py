"""The MILI worker: engine, models, tokenizer, OpenAI-compatible server, metrics and CLI."""

from mili.worker.config import EngineConfig
from mili.worker.engine.request import CompletionOutput, RequestOutput
from mili.worker.llm import LLM
from mili.worker.sampling_params import SamplingParams

__all__ = ["LLM", "CompletionOutput", "EngineConfig", "RequestOutput", "SamplingParams"]
