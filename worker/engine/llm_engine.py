"""The engine: requests in, one scheduled step at a time, outputs out."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

from mili.worker.config import EngineConfig
from mili.worker.engine.block_manager import BlockManager
from mili.worker.engine.model_runner import ModelRunner
from mili.worker.engine.outputs import RequestDelta
from mili.worker.engine.request import Request
from mili.worker.engine.scheduler import Scheduler
from mili.worker.engine.sequence import Sequence
from mili.worker.kv_events import KvEventPublisher
from mili.worker.model_source import resolve_model_source
from mili.worker.models.model_config import ModelConfig
from mili.worker.sampling_params import SamplingParams
from mili.worker.structured.admission import StructuredAdmission
from mili.worker.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


class RequestRejected(ValueError):
    """A request that can never be served as asked (too long, bad tokens); the message says why and
    ``param`` names the request field at fault."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class StepFailed(RuntimeError):
    """Running the model (or the sampler) failed for a whole batch: its requests were failed and
    released, and ``deltas`` tell them so; every other request goes on."""

    def __init__(self, message: str, deltas: list[RequestDelta]) -> None:
        super().__init__(message)
        self.deltas = deltas


@dataclass
class EngineStats:
    num_running: int
    num_waiting: int
    kv_cache_usage: float
    num_kv_blocks: int
    num_preemptions: int
    prefix_queried_tokens: int
    prefix_hit_tokens: int


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        model_dir = resolve_model_source(config.model)
        self.model_dir = model_dir
        self.tokenizer = Tokenizer.from_pretrained(model_dir)
        self.model_config = ModelConfig.from_dir(model_dir)
        self.runner = ModelRunner(config, model_dir, self.model_config)
        self.max_model_len = self._max_model_len()
        self.block_manager = BlockManager(self.runner.num_blocks, config.block_size, config.prefix_caching)
        self.scheduler = Scheduler(config, self.block_manager)
        self.kv_events = self._kv_event_publisher()
        self.eos_token_ids = frozenset(self.tokenizer.eos_token_ids) | frozenset(
            self.model_config.eos_token_ids
        )
        self.requests: dict[str, Request] = {}
        self.structured = StructuredAdmission(
            self.tokenizer, self.model_config.vocab_size, self.eos_token_ids
        )

    def _kv_event_publisher(self) -> KvEventPublisher | None:
        endpoint = self.config.kv_events_endpoint
        if endpoint is None or self.block_manager.prefix_cache is None:  # EngineConfig refuses the latter
            return None
        publisher = KvEventPublisher(
            endpoint, self.config.block_size, replay_endpoint=self.config.kv_events_replay_endpoint
        )
        self.block_manager.prefix_cache.observer = publisher
        publisher.flush()  # AllBlocksCleared: a (re)started worker holds nothing
        return publisher

    def _max_model_len(self) -> int:
        model_limit = self.model_config.max_position_embeddings
        pool_limit = self.runner.num_blocks * self.config.block_size
        asked = self.config.max_model_len
        if asked is None:
            limit = min(model_limit, pool_limit)
            if limit < model_limit:
                logger.info("max_model_len capped at %d tokens: what the KV pool holds", limit)
            return limit
        if asked > model_limit:
            raise ValueError(
                f"max_model_len {asked} exceeds the model's max_position_embeddings {model_limit}"
            )
        if asked > pool_limit:
            raise ValueError(
                f"max_model_len {asked} exceeds what the KV pool holds ({pool_limit} tokens): "
                "lower max_model_len or give the cache more memory"
            )
        return asked

    # --- requests ---------------------------------------------------------------------------------
    def add_request(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams,
        arrival_time: float | None = None,
    ) -> Request:
        """Queue a request; raises RequestRejected if it can never be served as asked."""
        if request_id in self.requests:
            raise RequestRejected(f"request id {request_id!r} is already in use")
        text = prompt if isinstance(prompt, str) else None
        token_ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        self._validate(token_ids, params)
        if params.max_tokens is None:
            params = replace(params, max_tokens=self.max_model_len - len(token_ids))
        request = Request(
            request_id, text, token_ids, params, self.tokenizer, arrival_time=arrival_time or time.monotonic()
        )
        self.requests[request_id] = request
        if self.structured.admit(request):
            self._schedule(request)
        return request

    def _schedule(self, request: Request) -> None:
        for seq in request.seqs:
            self.scheduler.add(seq)

    def _validate(self, token_ids: list[int], params: SamplingParams) -> None:
        """Every client value that indexes a tensor is checked here, before it can reach a step."""
        if not token_ids:
            raise RequestRejected("the prompt is empty", param="prompt")
        vocab = self.model_config.vocab_size
        if any(not 0 <= t < vocab for t in token_ids):
            raise RequestRejected(f"prompt token ids must be in [0, {vocab})", param="prompt")
        if any(not 0 <= t < vocab for t in params.stop_token_ids):
            raise RequestRejected(f"stop_token_ids must be in [0, {vocab})", param="stop_token_ids")
        if any(not 0 <= t < vocab for t in params.logit_bias or {}):
            raise RequestRejected(f"logit_bias keys must be token ids in [0, {vocab})", param="logit_bias")
        if any(not 0 <= t < vocab for t in params.allowed_token_ids or []):
            raise RequestRejected(f"allowed_token_ids must be in [0, {vocab})", param="allowed_token_ids")
        if len(token_ids) >= self.max_model_len:
            raise RequestRejected(
                f"the prompt has {len(token_ids)} tokens; this model's context limit is {self.max_model_len} "
                "tokens, prompt and output together",
                param="prompt",
            )
        if params.max_tokens is not None and len(token_ids) + params.max_tokens > self.max_model_len:
            raise RequestRejected(
                f"prompt ({len(token_ids)} tokens) + max_tokens ({params.max_tokens}) exceeds the context "
                f"limit of {self.max_model_len} tokens",
                param="max_tokens",
            )

    def abort_request(self, request_id: str) -> RequestDelta | None:
        """Stop a request wherever it is and release its blocks; returns its last delta (unfinished
        sequences end with finish_reason "abort"), or None for an unknown id."""
        request = self.requests.get(request_id)
        if request is None:
            return None
        self._end_request(request, "abort")
        return self._take_delta(request)

    def fail_request(self, request_id: str, message: str) -> RequestDelta | None:
        """End a request with an error (its sequences finish with reason "error") and release it."""
        request = self.requests.get(request_id)
        return None if request is None else self._fail(request, message)

    def running_request_ids(self) -> set[str]:
        """Requests with a sequence in the running batch."""
        return {seq.request_id for seq in self.scheduler.running}

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    @property
    def num_waiting_requests(self) -> int:
        """Requests with a sequence waiting for the scheduler (new or preempted)."""
        return len({seq.request_id for seq in self.scheduler.waiting})

    # --- the loop ---------------------------------------------------------------------------------
    def step(self) -> list[RequestDelta]:
        """Schedule, run the model, take the sampled tokens, report what moved (one delta per request).

        A failure while handling one sequence (detokenizing, stop strings) fails its request alone;
        a failure of the batched model run or sampler fails the batch's requests and raises
        ``StepFailed`` carrying their deltas.
        """
        compiled = self._admit_compiled()
        batch = self.scheduler.schedule()
        if not batch:
            return compiled
        now = time.monotonic()
        for entry in batch.entries:
            metrics = self.requests[entry.seq.request_id].metrics
            if metrics.first_scheduled_time is None:
                metrics.first_scheduled_time = now
                metrics.num_cached_tokens = entry.seq.num_cached_tokens
        try:
            samples = self.runner.run(batch, self.eos_token_ids)
            self.scheduler.postprocess(batch)
        except Exception as error:
            failed = {entry.seq.request_id: self.requests[entry.seq.request_id] for entry in batch.entries}
            message = f"the engine failed while running this request: {type(error).__name__}: {error}"
            deltas = [self._fail(request, message) for request in failed.values()]
            raise StepFailed(message, compiled + deltas) from error
        if self.kv_events is not None:
            self.kv_events.flush()
        sampled = [entry.seq for entry in batch.entries if entry.samples]
        moved: dict[str, Request] = {}
        for seq, sample in zip(sampled, samples, strict=True):
            request = self.requests[seq.request_id]
            if request.error is not None:
                continue  # another of its sequences failed earlier in this step
            moved[seq.request_id] = request
            try:
                request.append_token(
                    seq, sample.token_id, sample.logprobs, self.eos_token_ids, self.max_model_len
                )
                if seq.finish_reason is not None:
                    self._finish(seq)
            except Exception as error:
                logger.exception("request %s failed while taking its token", seq.request_id)
                request.error = f"the engine failed on this request: {type(error).__name__}: {error}"
                self._end_request(request, "error")
        return compiled + [self._take_delta(request) for request in moved.values()]

    def _admit_compiled(self) -> list[RequestDelta]:
        """Schedule the requests whose grammar finished compiling; fail those whose grammar failed."""
        ready, failed = self.structured.take_compiled()
        for request in ready:
            self._schedule(request)
        return [self._fail(request, message) for request, message in failed]

    def _fail(self, request: Request, message: str) -> RequestDelta:
        request.error = message
        self._end_request(request, "error")
        return self._take_delta(request)

    def _end_request(self, request: Request, reason: str) -> None:
        for seq in request.seqs:
            if seq.finish_reason is None:
                request.finish(seq, reason)
            if not seq.is_finished:
                self._finish(seq)

    def _take_delta(self, request: Request) -> RequestDelta:
        delta = request.take_delta()
        if delta.finished:
            request.metrics.finished_time = time.monotonic()
            self.requests.pop(request.request_id, None)
        return delta

    def _finish(self, seq: Sequence) -> None:
        self.scheduler.finish(seq)
        self.runner.sampler.forget(seq)
        self.structured.forget(seq.request_id)
        seq.grammar = None  # releases the matcher

    def stats(self) -> EngineStats:
        stats = self.block_manager.stats
        return EngineStats(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            kv_cache_usage=self.block_manager.usage,
            num_kv_blocks=self.block_manager.num_blocks,
            num_preemptions=self.scheduler.num_preemptions,
            prefix_queried_tokens=stats.queried_tokens,
            prefix_hit_tokens=stats.hit_tokens,
        )
