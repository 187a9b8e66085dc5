"""A request's sequences and its user-facing output: detokenized text, stop handling, timings."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from mili.worker.detokenizer import IncrementalDetokenizer
from mili.worker.engine.sequence import Sequence, TokenLogprobs
from mili.worker.engine.stop_checker import find_stop, safe_prefix_len
from mili.worker.sampling_params import SamplingParams
from mili.worker.tokenizer import Tokenizer


@dataclass
class CompletionOutput:
    """One of a request's n samples. Before it finishes, ``text`` holds only what is safe to show
    (a possible stop string at its end is held back), so it only ever grows."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None  # "stop", "length" or "abort" once finished
    stop_reason: str | int | None = None
    logprobs: list[TokenLogprobs] | None = None


@dataclass
class RequestMetrics:
    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    finished_time: float | None = None
    num_cached_tokens: int = 0


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics


@dataclass
class _SampleState:
    seq: Sequence
    detokenizer: IncrementalDetokenizer
    text: str = ""
    visible_len: int = 0


@dataclass
class Request:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    tokenizer: Tokenizer
    arrival_time: float = field(default_factory=time.monotonic)
    samples: list[_SampleState] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.metrics = RequestMetrics(arrival_time=self.arrival_time)
        for index in range(self.params.n):
            seq = Sequence(
                self.request_id, index, list(self.prompt_token_ids), self.params, self.arrival_time
            )
            detokenizer = IncrementalDetokenizer(
                self.tokenizer, self.prompt_token_ids, skip_special_tokens=self.params.skip_special_tokens
            )
            self.samples.append(_SampleState(seq, detokenizer))

    @property
    def seqs(self) -> list[Sequence]:
        return [sample.seq for sample in self.samples]

    @property
    def finished(self) -> bool:
        return all(sample.seq.is_finished for sample in self.samples)

    def append_token(
        self,
        seq: Sequence,
        token_id: int,
        logprobs: TokenLogprobs | None,
        eos_token_ids: frozenset[int],
        max_model_len: int,
    ) -> None:
        """Take a sampled token: extend text, decide whether the sequence is done (sets finish_reason)."""
        now = time.monotonic()
        if self.metrics.first_token_time is None:
            self.metrics.first_token_time = now
        self.metrics.last_token_time = now
        sample = self.samples[seq.index]
        params = self.params
        seq.token_ids.append(token_id)
        if logprobs is not None:
            seq.logprobs.append(logprobs)
        past_min = seq.num_output_tokens >= params.min_tokens
        if past_min and (
            (token_id in eos_token_ids and not params.ignore_eos) or token_id in params.stop_token_ids
        ):
            seq.finish_reason = "stop"
            seq.stop_reason = None if token_id in eos_token_ids else token_id
            return
        delta = sample.detokenizer.add_token(token_id)
        sample.text += delta
        if past_min and params.stop and delta:
            hit = find_stop(sample.text, len(delta), params.stop)
            if hit is not None:
                index, stop = hit
                sample.text = sample.text[: index + (len(stop) if params.include_stop_str_in_output else 0)]
                seq.finish_reason, seq.stop_reason = "stop", stop
                return
        if (params.max_tokens is not None and seq.num_output_tokens >= params.max_tokens) or len(
            seq
        ) >= max_model_len:
            seq.finish_reason = "length"

    def output(self) -> RequestOutput:
        outputs = []
        for sample in self.samples:
            seq = sample.seq
            if seq.finish_reason is None and self.params.stop:
                visible = safe_prefix_len(sample.text, self.params.stop)
            else:
                visible = len(sample.text)
            sample.visible_len = max(sample.visible_len, visible)
            outputs.append(
                CompletionOutput(
                    index=seq.index,
                    text=sample.text[: sample.visible_len],
                    token_ids=list(seq.output_token_ids),
                    finish_reason=seq.finish_reason,
                    stop_reason=seq.stop_reason,
                    logprobs=list(seq.logprobs) if self.params.logprobs is not None else None,
                )
            )
        return RequestOutput(
            request_id=self.request_id,
            prompt=self.prompt,
            prompt_token_ids=self.prompt_token_ids,
            outputs=outputs,
            finished=self.finished,
            metrics=self.metrics,
        )
