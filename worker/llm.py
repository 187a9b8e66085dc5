"""Offline batch generation, shaped like vLLM's `LLM`: an import swap away for benchmarks."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from tqdm import tqdm

from mili.worker.config import EngineConfig
from mili.worker.engine.llm_engine import LLMEngine
from mili.worker.engine.request import RequestOutput
from mili.worker.model_source import DEFAULT_MODEL
from mili.worker.sampling_params import SamplingParams
from mili.worker.tokenizer import Tokenizer


class LLM:
    """``LLM(model=SOURCE, **engine_args).generate(prompts, SamplingParams(...))``."""

    def __init__(self, model: str = DEFAULT_MODEL, **engine_args) -> None:
        self.engine = LLMEngine(EngineConfig(model=model, **engine_args))
        self._ids = itertools.count()

    @property
    def tokenizer(self) -> Tokenizer:
        return self.engine.tokenizer

    def generate(
        self,
        prompts: str | Sequence[str] | Sequence[list[int]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = False,
    ) -> list[RequestOutput]:
        """Run every prompt to completion (continuous batching); outputs come back in prompt order.
        A prompt is text or a list of token ids."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]  # type: ignore[list-item]
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, SamplingParams):
            sampling_params = [sampling_params] * len(prompts)
        if len(sampling_params) != len(prompts):
            raise ValueError(f"got {len(sampling_params)} sampling params for {len(prompts)} prompts")
        order = []
        for prompt, params in zip(prompts, sampling_params, strict=True):
            request_id = str(next(self._ids))
            self.engine.add_request(request_id, prompt, params)
            order.append(request_id)
        finished: dict[str, RequestOutput] = {}
        with tqdm(total=len(order), disable=not use_tqdm, desc="generate") as progress:
            while self.engine.has_unfinished_requests():
                for output in self.engine.step():
                    if output.finished:
                        finished[output.request_id] = output
                        progress.update(1)
        return [finished[request_id] for request_id in order]

    def chat(
        self, messages: list[dict] | list[list[dict]], sampling_params: SamplingParams | None = None
    ) -> list[RequestOutput]:
        """Apply the checkpoint's chat template to each conversation, then generate."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts = [
            self.tokenizer.encode(self.tokenizer.apply_chat_template(c), add_special_tokens=False)
            for c in conversations
        ]
        return self.generate(prompts, sampling_params)
