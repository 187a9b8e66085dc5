"""What the engine hands out: per-step deltas, and their sum where a whole output is wanted.

Each step the engine reports, per request that moved, one ``RequestDelta`` holding a ``SequenceDelta``
for each of its sequences that moved: the token ids, text and logprobs that are new since the last
delta, and the finish reason once it ends. Nothing is repeated: a consumer that wants the whole output
(the offline ``LLM``, a non-streaming response) adds the deltas up once, with ``OutputAccumulator``; a
stream whose reader falls behind adds up what it has not read yet the same way, so an unread stream
costs the size of its output, never a copy per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mili.worker.engine.sequence import TokenLogprobs


@dataclass
class RequestMetrics:
    """Timestamps (``time.monotonic()``) of one request, kept by the engine and shared by its deltas."""

    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    finished_time: float | None = None
    num_cached_tokens: int = 0


@dataclass
class SequenceDelta:
    """What one of a request's n sequences produced since its last delta.

    ``text`` is only text that is safe to show: while the sequence runs, a suffix that could still
    become a stop string is held back, so text is only ever appended, never taken back. ``logprobs``
    (when asked for) has one entry per id in ``token_ids``.
    """

    index: int
    token_ids: list[int]
    text: str
    logprobs: list[TokenLogprobs] | None = None
    finish_reason: str | None = None  # "stop", "length", "abort" or "error" once finished
    stop_reason: str | int | None = None  # the stop string or stop token id that ended it

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestDelta:
    """One step's news about one request: the sequences that moved, and whether the request ended.

    ``error`` is set when the engine failed while handling this request (its sequences then finish with
    reason "error"); no other request is affected.
    """

    request_id: str
    num_prompt_tokens: int
    sequences: list[SequenceDelta]
    finished: bool
    metrics: RequestMetrics
    error: str | None = None
    # per prompt token (the first None), in the request's first delta with sequences, when asked for
    prompt_logprobs: list[TokenLogprobs | None] | None = None


@dataclass
class CompletionOutput:
    """The whole output of one sequence (the sum of its deltas)."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None
    stop_reason: str | int | None = None
    logprobs: list[TokenLogprobs] | None = None


@dataclass
class RequestOutput:
    """The whole output of one request, shaped like vLLM's."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics
    error: str | None = None
    prompt_logprobs: list[TokenLogprobs | None] | None = None


@dataclass
class OutputAccumulator:
    """Sum of one sequence's deltas. Text is kept as pieces and joined when read, so adding a delta
    costs its own size, however long the output already is."""

    index: int
    text_pieces: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprobs] | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None

    def add(self, delta: SequenceDelta) -> None:
        if delta.text:
            self.text_pieces.append(delta.text)
        self.token_ids.extend(delta.token_ids)
        if delta.logprobs is not None:
            if self.logprobs is None:
                self.logprobs = []
            self.logprobs.extend(delta.logprobs)
        if delta.finish_reason is not None:
            self.finish_reason, self.stop_reason = delta.finish_reason, delta.stop_reason

    @property
    def text(self) -> str:
        if len(self.text_pieces) > 1:
            self.text_pieces[:] = ["".join(self.text_pieces)]
        return self.text_pieces[0] if self.text_pieces else ""

    @property
    def has_text(self) -> bool:
        return bool(self.text_pieces)

    def as_delta(self) -> SequenceDelta:
        """Everything added so far, as one delta."""
        return SequenceDelta(
            self.index, self.token_ids, self.text, self.logprobs, self.finish_reason, self.stop_reason
        )

    def as_completion(self) -> CompletionOutput:
        return CompletionOutput(
            self.index, self.text, self.token_ids, self.finish_reason, self.stop_reason, self.logprobs
        )


class RequestAccumulator:
    """Adds up the deltas of one request into its ``RequestOutput``."""

    def __init__(self, request_id: str, prompt: str | None, prompt_token_ids: list[int], n: int) -> None:
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.sequences = [OutputAccumulator(index) for index in range(n)]
        self.finished = False
        self.error: str | None = None
        self.metrics: RequestMetrics | None = None
        self.prompt_logprobs: list[TokenLogprobs | None] | None = None

    def add(self, delta: RequestDelta) -> None:
        if delta.prompt_logprobs is not None:
            self.prompt_logprobs = delta.prompt_logprobs
        for sequence in delta.sequences:
            self.sequences[sequence.index].add(sequence)
        self.finished = delta.finished
        self.error = delta.error or self.error
        self.metrics = delta.metrics

    def output(self) -> RequestOutput:
        return RequestOutput(
            request_id=self.request_id,
            prompt=self.prompt,
            prompt_token_ids=self.prompt_token_ids,
            outputs=[sequence.as_completion() for sequence in self.sequences],
            finished=self.finished,
            metrics=self.metrics,
            error=self.error,
            prompt_logprobs=self.prompt_logprobs,
        )
