"""Continuous batching: pick each step's work under a token budget, then take back the sampled tokens.

Decodes go first (one token each, oldest first), then unfinished prefills, then new sequences; long
prompts are prefilled in chunks. When the KV pool runs dry, the newest running sequence is preempted
by recompute: its blocks are released and it returns to the front of the queue.

With prefix caching, a waiting sequence whose next uncached block is being computed in this very step
by another sequence (same tokens, same prefix) waits one step: it then shares that block instead of
computing a copy (what SGLang calls in-batch prefix caching). Many requests with one long system
prompt thus compute it once, not once per request admitted in the same step.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

from mili.worker.config import EngineConfig
from mili.worker.engine.block_manager import BlockManager
from mili.worker.engine.sequence import Sequence, SequenceStatus

logger = logging.getLogger(__name__)


@dataclass
class ScheduledSequence:
    seq: Sequence
    num_tokens: int  # tokens computed this step, starting at seq.num_computed_tokens
    samples: bool = False  # the step reaches the end of the known tokens, so it yields a new token

    def __post_init__(self) -> None:
        self.samples = self.seq.num_computed_tokens + self.num_tokens == len(self.seq)


@dataclass
class ScheduledBatch:
    decodes: list[ScheduledSequence] = field(default_factory=list)
    prefills: list[ScheduledSequence] = field(default_factory=list)

    @property
    def entries(self) -> list[ScheduledSequence]:
        return self.decodes + self.prefills

    @property
    def num_tokens(self) -> int:
        return len(self.decodes) + sum(entry.num_tokens for entry in self.prefills)

    def __bool__(self) -> bool:
        return bool(self.decodes or self.prefills)


class Scheduler:
    def __init__(self, config: EngineConfig, block_manager: BlockManager) -> None:
        self.max_num_seqs = config.max_num_seqs
        self.max_num_batched_tokens = config.max_num_batched_tokens
        self.prefix_caching = config.prefix_caching
        self.block_manager = block_manager
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # admission order: the last is the newest
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.max_num_batched_tokens
        scheduled: set[int] = set()
        preemptions_before = self.num_preemptions
        ordered = [s for s in self.running if s.is_decoding] + [s for s in self.running if not s.is_decoding]
        for seq in ordered:
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted earlier in this loop
            num_tokens = min(seq.num_uncomputed_tokens, budget)
            if not self._reserve(seq, num_tokens, scheduled):
                continue
            entry = ScheduledSequence(seq, num_tokens)
            (batch.decodes if seq.is_decoding else batch.prefills).append(entry)
            scheduled.add(seq.seq_id)
            budget -= num_tokens
        if self.num_preemptions > preemptions_before:
            return batch  # memory is short: admitting new work now would only thrash
        in_flight = self._blocks_in_flight(batch.prefills) if self.prefix_caching else set()
        for seq in list(self.waiting):
            if budget == 0 or len(self.running) >= self.max_num_seqs:
                break
            if self._next_block_in_flight(seq, in_flight):
                continue  # share it next step instead of computing it twice now; keeps its place
            num_tokens = self._admit(seq, budget)
            if num_tokens == 0:
                break  # no room: waiting sequences keep their order, none skips ahead for memory
            self.waiting.remove(seq)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            entry = ScheduledSequence(seq, num_tokens)
            batch.prefills.append(entry)
            if self.prefix_caching:
                in_flight |= self._blocks_in_flight([entry])
            scheduled.add(seq.seq_id)
            budget -= num_tokens
        return batch

    def _blocks_in_flight(self, prefills: list[ScheduledSequence]) -> set[int]:
        """Chain hashes of the full blocks these prefill chunks compute (whole prefix + block tokens)."""
        size = self.block_manager.block_size
        hashes: set[int] = set()
        for entry in prefills:
            first = entry.seq.num_computed_tokens // size
            last = min(-(-(entry.seq.num_computed_tokens + entry.num_tokens) // size), len(entry.seq) // size)
            hashes.update(block_chain_hashes(entry.seq.token_ids, size, last)[first:])
        return hashes

    def _next_block_in_flight(self, seq: Sequence, in_flight: set[int]) -> bool:
        """Whether the first block of ``seq`` that the cache lacks is being computed this step."""
        if not in_flight or seq.num_computed_tokens:
            return False
        size = self.block_manager.block_size
        cached = self.block_manager.cached_prefix_blocks(seq)
        if (cached + 1) * size > len(seq) - 1:
            return False  # no further full block would be shared anyway
        return block_chain_hashes(seq.token_ids, size, cached + 1)[-1] in in_flight

    def _reserve(self, seq: Sequence, num_tokens: int, scheduled: set[int]) -> bool:
        """Find blocks for a running sequence, preempting newer unscheduled ones (or itself) as needed."""
        while not self.block_manager.allocate(seq, num_tokens):
            victim = next((s for s in reversed(self.running) if s.seq_id not in scheduled), None)
            assert victim is not None, "a scheduled sequence alone can always fit (max_model_len ≤ pool)"
            self._preempt(victim)
            if victim is seq:
                return False
        return True

    def _admit(self, seq: Sequence, budget: int) -> int:
        """Reserve blocks for the first chunk of a waiting sequence; returns its size, 0 if it can't go."""
        if self.prefix_caching:
            # prompt logprobs need logits at every prompt position: cached tokens have none
            self.block_manager.match_prefix(seq, reuse=seq.prompt_logprobs is None)
        num_tokens = min(seq.num_uncomputed_tokens, budget)
        if self.block_manager.allocate(seq, num_tokens):
            self.block_manager.record_admission(seq)
            return num_tokens
        self.block_manager.free(seq)  # give back the prefix it matched; try again next step
        seq.num_cached_tokens = 0
        return 0

    def _preempt(self, seq: Sequence) -> None:
        logger.debug("preempting %s (%d tokens) by recompute", seq.request_id, len(seq))
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def postprocess(self, batch: ScheduledBatch) -> None:
        """Account the computed tokens; finished sequences must already be marked by the caller."""
        for entry in batch.entries:
            entry.seq.num_computed_tokens += entry.num_tokens
            if self.prefix_caching:
                self.block_manager.cache_full_blocks(entry.seq)

    def finish(self, seq: Sequence) -> None:
        """Release a finished (or aborted) sequence wherever it is."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED


def block_chain_hashes(token_ids: list[int], block_size: int, num_blocks: int) -> list[int]:
    """For each of the first ``num_blocks`` full blocks, a hash of every token up to its end: equal
    hashes mean equal KV (the same block after the same prefix)."""
    hashes, running = [], 0
    for i in range(num_blocks):
        running = hash((running, tuple(token_ids[i * block_size : (i + 1) * block_size])))
        hashes.append(running)
    return hashes
