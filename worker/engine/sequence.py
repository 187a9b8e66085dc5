"""The state of one generated sequence (a request with n > 1 owns n of them)."""

from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mili.worker.sampling_params import SamplingParams

if TYPE_CHECKING:
    from mili.worker.engine.prompt_logprobs import PromptLogprobs
    from mili.worker.structured.matcher import GrammarState
    from mili.worker.structured.token_constraints import TokenConstraints


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class TokenLogprobs:
    """Log-probability of the chosen token and the top alternatives at one position."""

    token_id: int
    logprob: float
    top: dict[int, float]
    rank: int | None = None  # of token_id in the vocabulary (1 = most likely), where it was computed


_ids = itertools.count()


@dataclass(eq=False)
class Sequence:
    """Token ids (prompt then output), how many of them sit in the KV cache, and the block table."""

    request_id: str
    index: int  # which of the request's n samples
    token_ids: list[int]
    params: SamplingParams
    arrival_time: float = field(default_factory=time.monotonic)
    seq_id: int = field(default_factory=lambda: next(_ids))
    status: SequenceStatus = SequenceStatus.WAITING
    num_prompt_tokens: int = 0
    num_computed_tokens: int = 0  # tokens whose K/V is in the cache
    num_cached_tokens: int = 0  # of those, taken from the prefix cache at admission
    block_table: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    num_preemptions: int = 0
    first_token_time: float | None = None
    grammar: GrammarState | None = None  # the grammar its output follows, while it runs
    token_constraints: TokenConstraints | None = None  # logit_bias, allowed_token_ids, bad_words
    prompt_logprobs: PromptLogprobs | None = None  # gathered during prefill until delivered

    def __post_init__(self) -> None:
        self.num_prompt_tokens = len(self.token_ids)

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_decoding(self) -> bool:
        """One new token whose predecessors are all cached: the cheap, latency-critical kind of work."""
        return self.num_computed_tokens > 0 and self.num_uncomputed_tokens == 1

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED
