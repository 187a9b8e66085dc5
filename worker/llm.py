"""Offline batch generation, shaped like vLLM's `LLM`: an import swap away for benchmarks."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from tqdm import tqdm

from mili.worker.config import EngineConfig
from mili.worker.engine.llm_engine import LLMEngine
from mili.worker.engine.outputs import RequestAccumulator, RequestOutput
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
        outputs: dict[str, RequestAccumulator] = {}
        for prompt, params in zip(prompts, sampling_params, strict=True):
            request_id = str(next(self._ids))
            request = self.engine.add_request(request_id, prompt, params)
            outputs[request_id] = RequestAccumulator(
                request_id, request.prompt, request.prompt_token_ids, params.n
            )
        with tqdm(total=len(outputs), disable=not use_tqdm, desc="generate") as progress:
            while self.engine.has_unfinished_requests():
                for delta in self.engine.step():
                    outputs[delta.request_id].add(delta)
                    if delta.error is not None:
                        raise RuntimeError(f"request {delta.request_id} failed: {delta.error}")
                    progress.update(int(delta.finished))
        return [accumulated.output() for accumulated in outputs.values()]

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
