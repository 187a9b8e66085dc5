"""A request's n sequences and what each step adds to them: detokenized text, stop handling, deltas.

Per sequence only what the next step needs is kept: the token ids (the model and the penalties read
them), the detokenizer's short window and the held-back suffix of the stop strings. Text and logprobs
leave in the step's delta and are not kept here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from mili.worker.detokenizer import IncrementalDetokenizer
from mili.worker.engine.outputs import RequestDelta, RequestMetrics, SequenceDelta
from mili.worker.engine.prompt_logprobs import PromptLogprobs
from mili.worker.engine.sequence import Sequence, TokenLogprobs
from mili.worker.engine.stop_checker import StopMatcher, StopStrings
from mili.worker.sampling_params import SamplingParams
from mili.worker.tokenizer import Tokenizer


@dataclass
class _SequenceState:
    seq: Sequence
    detokenizer: IncrementalDetokenizer
    stops: StopMatcher
    delta: SequenceDelta | None = None  # what this step added, until the request's delta is taken


@dataclass
class Request:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    tokenizer: Tokenizer
    arrival_time: float = field(default_factory=time.monotonic)
    states: list[_SequenceState] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.metrics = RequestMetrics(arrival_time=self.arrival_time)
        self.error: str | None = None
        stops = StopStrings(self.params.stop, self.params.include_stop_str_in_output)
        for index in range(self.params.n):
            seq = Sequence(
                self.request_id, index, list(self.prompt_token_ids), self.params, self.arrival_time
            )
            detokenizer = IncrementalDetokenizer(
                self.tokenizer, self.prompt_token_ids, skip_special_tokens=self.params.skip_special_tokens
            )
            self.states.append(_SequenceState(seq, detokenizer, stops.matcher()))
        if self.params.prompt_logprobs is not None:  # once per request, on its first sequence
            self.states[0].seq.prompt_logprobs = PromptLogprobs(
                self.params.prompt_logprobs, len(self.prompt_token_ids)
            )

    @property
    def seqs(self) -> list[Sequence]:
        return [state.seq for state in self.states]

    @property
    def finished(self) -> bool:
        return all(state.seq.finish_reason is not None for state in self.states)

    def append_token(
        self,
        seq: Sequence,
        token_id: int,
        logprobs: TokenLogprobs | None,
        eos_token_ids: frozenset[int],
        max_model_len: int,
    ) -> None:
        """Take a sampled token: extend the text, decide whether the sequence is done (sets
        ``finish_reason``), and record what moved for the next ``take_delta``."""
        now = time.monotonic()
        if self.metrics.first_token_time is None:
            self.metrics.first_token_time = now
        self.metrics.last_token_time = now
        state = self.states[seq.index]
        params = self.params
        seq.token_ids.append(token_id)
        if seq.grammar is not None:
            seq.grammar.accept(token_id)
        delta = self._delta_of(state)
        delta.token_ids.append(token_id)
        if logprobs is not None:
            delta.logprobs.append(logprobs)
        past_min = seq.num_output_tokens >= params.min_tokens
        if past_min and (
            (token_id in eos_token_ids and not params.ignore_eos) or token_id in params.stop_token_ids
        ):
            self._end(state, "stop", None if token_id in eos_token_ids else token_id)
            return
        new_text = state.detokenizer.add_token(token_id)
        if new_text:
            shown, stop = state.stops.feed(new_text, detect=past_min)
            delta.text += shown
            if stop is not None:
                self._end(state, "stop", stop)
                return
        if (params.max_tokens is not None and seq.num_output_tokens >= params.max_tokens) or len(
            seq
        ) >= max_model_len:
            self._end(state, "length", None)

    def finish(self, seq: Sequence, reason: str) -> None:
        """End a sequence from outside a step (abort, failure); its held-back text is dropped."""
        if seq.finish_reason is None:
            state = self.states[seq.index]
            seq.finish_reason, seq.stop_reason = reason, None
            self._delta_of(state).finish_reason = reason

    def _end(self, state: _SequenceState, reason: str, stop_reason: str | int | None) -> None:
        delta = self._delta_of(state)
        if reason != "stop" or not isinstance(stop_reason, str):
            # No stop string ended it: held-back text is text after all, and so is a last
            # incomplete character (as U+FFFD, as a full decode shows it).
            delta.text += state.stops.release() + state.detokenizer.flush()
        state.seq.finish_reason, state.seq.stop_reason = reason, stop_reason
        delta.finish_reason, delta.stop_reason = reason, stop_reason

    def _delta_of(self, state: _SequenceState) -> SequenceDelta:
        if state.delta is None:
            logprobs = [] if self.params.logprobs is not None else None
            state.delta = SequenceDelta(state.seq.index, [], "", logprobs)
        return state.delta

    def take_delta(self) -> RequestDelta:
        """What moved since the last call, as one delta (the sequences that moved, in index order).

        A request that asked for prompt logprobs sends nothing until they are complete, then sends
        them once, with the first tokens: a reader sees them before any output."""
        if self._waits_for_prompt_logprobs:
            return RequestDelta(self.request_id, len(self.prompt_token_ids), [], False, self.metrics)
        moved = [state.delta for state in self.states if state.delta is not None]
        for state in self.states:
            state.delta = None
        return RequestDelta(
            request_id=self.request_id,
            num_prompt_tokens=len(self.prompt_token_ids),
            sequences=moved,
            finished=self.finished,
            metrics=self.metrics,
            error=self.error,
            prompt_logprobs=self._take_prompt_logprobs(),
        )

    @property
    def _waits_for_prompt_logprobs(self) -> bool:
        collector = self.states[0].seq.prompt_logprobs
        return collector is not None and not collector.complete and not self.finished

    def _take_prompt_logprobs(self) -> list[TokenLogprobs | None] | None:
        """The prompt logprobs once complete; the sequence then forgets them."""
        seq = self.states[0].seq
        collector = seq.prompt_logprobs
        if collector is None or not collector.complete:
            return None
        seq.prompt_logprobs = None  # delivered: a recompute after preemption may use the prefix cache
        return collector.entries
