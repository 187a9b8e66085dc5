"""Per-request sampling parameters, shaped like vLLM's `SamplingParams`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mili.worker.structured.spec import StructuredOutputsParams

MAX_LOGPROBS = 20
MAX_LOGIT_BIAS = 100.0
MAX_STOP_STRINGS = 64
MAX_STOP_STRING_CHARS = 1024
# Below this a temperature (or a nucleus) keeps only the most likely token: decode greedily, since
# dividing logits by it would overflow to inf and the softmax to NaN.
GREEDY_BELOW = 1e-5


@dataclass
class SamplingParams:
    """How to pick tokens and when to stop. Validated at construction (ValueError names the field)."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1 or 0 = all tokens
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    max_tokens: int | None = 16  # None = up to the model's context limit
    min_tokens: int = 0
    logprobs: int | None = None  # number of top logprobs per generated token (0 = only the sampled one)
    prompt_logprobs: int | None = None  # the same per prompt token (computed in prefill; see engine.md)
    skip_special_tokens: bool = True
    logit_bias: dict[int, float] | None = None  # added to the logits of these ids, in [-100, 100]
    allowed_token_ids: list[int] | None = None  # only these ids may be sampled
    bad_words: list[str] = field(default_factory=list)  # never generated (as vLLM spells them)
    structured_outputs: StructuredOutputsParams | None = None  # a grammar the output must follow

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop)
        self.stop_token_ids = list(self.stop_token_ids)
        checks = [
            (self.n >= 1, f"n must be at least 1, got {self.n}"),
            (0.0 <= self.temperature <= 2.0, f"temperature must be in [0, 2], got {self.temperature}"),
            (0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.top_k == -1 or self.top_k >= 0, f"top_k must be -1 (off) or >= 0, got {self.top_k}"),
            (0.0 <= self.min_p <= 1.0, f"min_p must be in [0, 1], got {self.min_p}"),
            (
                0.0 < self.repetition_penalty <= 2.0 or self.repetition_penalty == 1.0,
                f"repetition_penalty must be in (0, 2], got {self.repetition_penalty}",
            ),
            (
                -2.0 <= self.presence_penalty <= 2.0,
                f"presence_penalty must be in [-2, 2], got {self.presence_penalty}",
            ),
            (
                -2.0 <= self.frequency_penalty <= 2.0,
                f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}",
            ),
            (
                self.max_tokens is None or self.max_tokens >= 1,
                f"max_tokens must be at least 1, got {self.max_tokens}",
            ),
            (self.min_tokens >= 0, f"min_tokens must be >= 0, got {self.min_tokens}"),
            (
                self.max_tokens is None or self.min_tokens <= self.max_tokens,
                f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})",
            ),
            (
                self.logprobs is None or 0 <= self.logprobs <= MAX_LOGPROBS,
                f"logprobs must be in [0, {MAX_LOGPROBS}], got {self.logprobs}",
            ),
            (
                self.prompt_logprobs is None or 0 <= self.prompt_logprobs <= MAX_LOGPROBS,
                f"prompt_logprobs must be in [0, {MAX_LOGPROBS}], got {self.prompt_logprobs}",
            ),
            (all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty strings"),
            (
                len(self.stop) <= MAX_STOP_STRINGS,
                f"stop must hold at most {MAX_STOP_STRINGS} strings, got {len(self.stop)}",
            ),
            (
                all(len(s) <= MAX_STOP_STRING_CHARS for s in self.stop),
                f"stop strings must be at most {MAX_STOP_STRING_CHARS} characters long",
            ),
            (
                all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids),
                "stop_token_ids must be non-negative integers",
            ),
        ]
        checks += self._constraint_checks()
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def _constraint_checks(self) -> list[tuple[bool, str]]:
        bias = self.logit_bias or {}
        return [
            (
                all(isinstance(t, int) and t >= 0 for t in bias),
                "logit_bias keys must be non-negative token ids",
            ),
            (
                all(-MAX_LOGIT_BIAS <= v <= MAX_LOGIT_BIAS for v in bias.values()),
                f"logit_bias values must be in [-{MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}]",
            ),
            (
                self.allowed_token_ids is None
                or (bool(self.allowed_token_ids) and all(t >= 0 for t in self.allowed_token_ids)),
                "allowed_token_ids must be a non-empty list of token ids",
            ),
            (
                all(isinstance(w, str) and w.strip() for w in self.bad_words),
                "bad_words must be non-empty strings",
            ),
        ]

    @property
    def greedy(self) -> bool:
        """Only the most likely token can be drawn (temperature or top_p below ``GREEDY_BELOW``, top_k 1)."""
        return self.temperature < GREEDY_BELOW or self.top_p < GREEDY_BELOW or self.top_k == 1
