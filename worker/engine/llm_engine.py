"""The engine: requests in, one scheduled step at a time, outputs out."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

from mili.worker.config import EngineConfig
from mili.worker.engine.block_manager import BlockManager
from mili.worker.engine.model_runner import ModelRunner
from mili.worker.engine.request import Request, RequestOutput
from mili.worker.engine.scheduler import Scheduler
from mili.worker.engine.sequence import Sequence
from mili.worker.kv_events import KvEventPublisher
from mili.worker.model_source import resolve_model_source
from mili.worker.models.model_config import ModelConfig
from mili.worker.sampling_params import SamplingParams
from mili.worker.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


class RequestRejected(ValueError):
    """A request that can never be served as asked (too long, bad tokens); the message says why."""


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

    def _kv_event_publisher(self) -> KvEventPublisher | None:
        endpoint = self.config.kv_events_endpoint
        if endpoint is None:
            return None
        if self.block_manager.prefix_cache is None:
            raise ValueError("kv_events_endpoint needs prefix caching: without it no block is ever shared")
        publisher = KvEventPublisher(endpoint, self.config.block_size)
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
    ) -> None:
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
        for seq in request.seqs:
            self.scheduler.add(seq)

    def _validate(self, token_ids: list[int], params: SamplingParams) -> None:
        if not token_ids:
            raise RequestRejected("the prompt is empty")
        vocab = self.model_config.vocab_size
        if any(not 0 <= t < vocab for t in token_ids):
            raise RequestRejected(f"prompt token ids must be in [0, {vocab})")
        if len(token_ids) >= self.max_model_len:
            raise RequestRejected(
                f"the prompt has {len(token_ids)} tokens; this model's context limit is {self.max_model_len} "
                "tokens, prompt and output together"
            )
        if params.max_tokens is not None and len(token_ids) + params.max_tokens > self.max_model_len:
            raise RequestRejected(
                f"prompt ({len(token_ids)} tokens) + max_tokens ({params.max_tokens}) exceeds the context "
                f"limit of {self.max_model_len} tokens"
            )

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Stop a request wherever it is and release its blocks; returns its final output
        (unfinished samples end with finish_reason "abort"), or None for an unknown id."""
        request = self.requests.pop(request_id, None)
        if request is None:
            return None
        for seq in request.seqs:
            if not seq.is_finished:
                seq.finish_reason = seq.finish_reason or "abort"
                self._finish(seq)
        request.metrics.finished_time = time.monotonic()
        return request.output()

    def running_request_ids(self) -> set[str]:
        """Requests with a sequence in the running batch (what a failed step was computing)."""
        return {seq.request_id for seq in self.scheduler.running}

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    # --- the loop ---------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Schedule, run the model, take the sampled tokens, report the requests that moved."""
        batch = self.scheduler.schedule()
        if not batch:
            return []
        now = time.monotonic()
        for entry in batch.entries:
            metrics = self.requests[entry.seq.request_id].metrics
            if metrics.first_scheduled_time is None:
                metrics.first_scheduled_time = now
                metrics.num_cached_tokens = entry.seq.num_cached_tokens
        samples = self.runner.run(batch, self.eos_token_ids)
        self.scheduler.postprocess(batch)
        if self.kv_events is not None:
            self.kv_events.flush()
        sampled = [entry.seq for entry in batch.entries if entry.samples]
        touched: dict[str, Request] = {}
        for seq, sample in zip(sampled, samples, strict=True):
            request = self.requests[seq.request_id]
            request.append_token(
                seq, sample.token_id, sample.logprobs, self.eos_token_ids, self.max_model_len
            )
            if seq.finish_reason is not None:
                self._finish(seq)
            touched[seq.request_id] = request
        outputs = []
        for request_id, request in touched.items():
            output = request.output()
            if output.finished:
                request.metrics.finished_time = time.monotonic()
                del self.requests[request_id]
            outputs.append(output)
        return outputs

    def _finish(self, seq: Sequence) -> None:
        self.scheduler.finish(seq)
        self.runner.sampler.forget(seq)

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
