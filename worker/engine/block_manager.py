"""KV block bookkeeping: which blocks each sequence owns, reference counts, and the prefix cache.

Pure Python over block ids, no tensors. A block is in exactly one state: *free* (on the free list),
*used* (referenced by at least one sequence) or *cached* (in the radix tree, unreferenced, evictable).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from mili.worker.engine.radix_cache import RadixCache, RadixNode
from mili.worker.engine.sequence import Sequence


@dataclass
class PrefixCacheStats:
    """Prefix-cache counters in tokens (feed `mili_prefix_cache_{queried,hit}_tokens_total`)."""

    queried_tokens: int = 0
    hit_tokens: int = 0


@dataclass
class _InsertCursor:
    """Where a sequence's next full block goes in the tree; None once a duplicate stopped insertion."""

    node: RadixNode | None
    num_blocks: int


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool = True) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.ref_counts = [0] * num_blocks
        self.free_block_ids: deque[int] = deque(range(num_blocks))
        self.prefix_cache = RadixCache(block_size, self.ref_counts) if prefix_caching else None
        self.num_cached_unreferenced = 0
        self.stats = PrefixCacheStats()
        self._cursors: dict[int, _InsertCursor] = {}

    # --- capacity ---------------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        """Blocks obtainable now: free ones plus cached ones that can be evicted."""
        return len(self.free_block_ids) + self.num_cached_unreferenced

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - self.num_free_blocks

    @property
    def usage(self) -> float:
        """Fraction of the pool referenced by sequences (cached-but-evictable blocks count as free)."""
        return self.num_used_blocks / self.num_blocks

    def blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        total = seq.num_computed_tokens + num_new_tokens
        return max(0, -(-total // self.block_size) - len(seq.block_table))

    def can_allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        return self.blocks_needed(seq, num_new_tokens) <= self.num_free_blocks

    # --- sequence lifecycle -----------------------------------------------------------------------
    def match_prefix(self, seq: Sequence, reuse: bool = True) -> int:
        """Share the longest cached prefix of a new sequence's tokens (its prefill skips them).
        Always leaves at least one token to compute, so the step produces logits. Returns hit tokens.
        With ``reuse`` off nothing is shared, but the blocks it computes are still published."""
        assert not seq.block_table and seq.num_computed_tokens == 0
        if self.prefix_cache is None:
            return 0
        chain = self.prefix_cache.match(seq.token_ids, self._shareable_blocks(seq)) if reuse else []
        for node in chain:
            self._ref(node.block_id)
        seq.block_table = [node.block_id for node in chain]
        seq.num_computed_tokens = seq.num_cached_tokens = len(chain) * self.block_size
        self._cursors[seq.seq_id] = _InsertCursor(chain[-1] if chain else self.prefix_cache.root, len(chain))
        return seq.num_cached_tokens

    def cached_prefix_blocks(self, seq: Sequence) -> int:
        """How many leading blocks of ``seq`` `match_prefix` would share now (takes no reference)."""
        if self.prefix_cache is None:
            return 0
        return len(self.prefix_cache.match(seq.token_ids, self._shareable_blocks(seq)))

    def _shareable_blocks(self, seq: Sequence) -> int:
        """Full blocks a new sequence may take from the cache: all but the one holding its last token."""
        return (len(seq) - 1) // self.block_size

    def record_admission(self, seq: Sequence) -> None:
        """Count an admitted sequence's prompt in the prefix-cache counters (tokens queried, tokens hit)."""
        self.stats.queried_tokens += len(seq)
        self.stats.hit_tokens += seq.num_cached_tokens

    def allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Grow the block table to hold ``num_new_tokens`` more tokens; False (nothing changed) if short."""
        needed = self.blocks_needed(seq, num_new_tokens)
        if needed > self.num_free_blocks:
            return False
        for _ in range(needed):
            block_id = self._take_block()
            self._ref(block_id)
            seq.block_table.append(block_id)
        return True

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Publish the sequence's newly completed blocks in the prefix tree (after a step computed them)."""
        cursor = self._cursors.get(seq.seq_id)
        if self.prefix_cache is None or cursor is None or cursor.node is None:
            return
        num_full = seq.num_computed_tokens // self.block_size
        while cursor.num_blocks < num_full:
            i = cursor.num_blocks
            tokens = tuple(seq.token_ids[i * self.block_size : (i + 1) * self.block_size])
            node = self.prefix_cache.insert(cursor.node, tokens, seq.block_table[i])
            if node is None:
                cursor.node = None  # someone cached these tokens first; our copy stays private
                return
            cursor.node, cursor.num_blocks = node, i + 1

    def free(self, seq: Sequence) -> None:
        """Drop the sequence's references (blocks in the tree stay cached) and reset its KV state."""
        for block_id in reversed(seq.block_table):
            self._unref(block_id)
        seq.block_table = []
        seq.num_computed_tokens = 0
        self._cursors.pop(seq.seq_id, None)

    # --- blocks -----------------------------------------------------------------------------------
    def _take_block(self) -> int:
        if self.free_block_ids:
            return self.free_block_ids.popleft()
        assert self.prefix_cache is not None
        block_id = self.prefix_cache.evict()
        assert block_id is not None, "num_free_blocks promised an evictable block"
        self.num_cached_unreferenced -= 1
        return block_id

    def _ref(self, block_id: int) -> None:
        if self.ref_counts[block_id] == 0 and self.prefix_cache is not None and block_id in self.prefix_cache:
            self.num_cached_unreferenced -= 1
        self.ref_counts[block_id] += 1

    def _unref(self, block_id: int) -> None:
        assert self.ref_counts[block_id] > 0, f"block {block_id} released more often than taken"
        self.ref_counts[block_id] -= 1
        if self.ref_counts[block_id] > 0:
            return
        if self.prefix_cache is not None and block_id in self.prefix_cache:
            self.num_cached_unreferenced += 1
            self.prefix_cache.on_unreferenced(block_id)
        else:
            self.free_block_ids.append(block_id)
