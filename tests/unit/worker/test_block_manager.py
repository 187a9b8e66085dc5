"""Block bookkeeping and the radix prefix cache, checked against a plain model of what the KV holds.

The state machine drives random admissions (prefix match + lock), compute steps, generated tokens and
releases through `BlockManager`, with eviction happening whenever the pool runs short. A shadow map records
which token prefix each block's KV was computed from, so the checks are semantic: a shared block always
holds exactly the prefix it is matched for, and the match is the longest the cache can offer.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from mili.worker.engine.block_manager import BlockManager
from mili.worker.engine.sequence import Sequence
from mili.worker.sampling_params import SamplingParams

BLOCK_SIZE = 4
NUM_BLOCKS = 16
tokens_strategy = st.lists(st.integers(0, 2), min_size=1, max_size=24)


class BlockManagerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.manager = BlockManager(NUM_BLOCKS, BLOCK_SIZE, prefix_caching=True)
        self.running: list[Sequence] = []
        self.contents: dict[int, tuple[int, ...]] = {}  # block → the token prefix its KV encodes

    def cached_prefixes(self) -> set[tuple[int, ...]]:
        return {self.contents[b] for b in range(NUM_BLOCKS) if b in self.manager.prefix_cache}

    @rule(tokens=tokens_strategy)
    def admit(self, tokens: list[int]) -> None:
        seq = Sequence("r", 0, tokens, SamplingParams())
        cached = self.cached_prefixes()
        expected_blocks = 0
        while (
            expected_blocks < (len(tokens) - 1) // BLOCK_SIZE
            and tuple(tokens[: (expected_blocks + 1) * BLOCK_SIZE]) in cached
        ):
            expected_blocks += 1
        hit = self.manager.match_prefix(seq)
        assert hit == expected_blocks * BLOCK_SIZE, "the match must be the longest cached prefix"
        for i, block in enumerate(seq.block_table):
            assert self.contents[block] == tuple(tokens[: (i + 1) * BLOCK_SIZE]), (
                "shared KV of another prefix"
            )
        if self.manager.allocate(seq, 1):
            self.running.append(seq)
        else:
            self.manager.free(seq)

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def compute(self, data: st.DataObject) -> None:
        seq = data.draw(st.sampled_from(self.running))
        if seq.num_uncomputed_tokens == 0:
            seq.token_ids.append(data.draw(st.integers(0, 2)))  # a generated token
        num_tokens = data.draw(st.integers(1, seq.num_uncomputed_tokens))
        if not self.manager.allocate(seq, num_tokens):
            return
        for position in range(seq.num_computed_tokens, seq.num_computed_tokens + num_tokens):
            block = seq.block_table[position // BLOCK_SIZE]
            assert self.manager.ref_counts[block] == 1, "writing into a shared block"
            assert block not in self.manager.prefix_cache, "writing into a cached block"
            self.contents[block] = tuple(seq.token_ids[: position + 1])
        seq.num_computed_tokens += num_tokens
        self.manager.cache_full_blocks(seq)

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        seq = data.draw(st.sampled_from(self.running))
        self.running.remove(seq)
        self.manager.free(seq)

    @invariant()
    def pool_accounting_holds(self) -> None:
        manager = self.manager
        refs = manager.ref_counts
        assert all(count >= 0 for count in refs)
        free = set(manager.free_block_ids)
        assert len(free) == len(manager.free_block_ids), "a block is on the free list twice"
        used = {b for b in range(NUM_BLOCKS) if refs[b] > 0}
        cached = {b for b in range(NUM_BLOCKS) if refs[b] == 0 and b in manager.prefix_cache}
        assert not free & used and not free & cached
        assert len(free) + len(used) + len(cached) == NUM_BLOCKS
        assert manager.num_cached_unreferenced == len(cached)
        expected_refs = [0] * NUM_BLOCKS
        for seq in self.running:
            for block in seq.block_table:
                expected_refs[block] += 1
        assert expected_refs == refs


BlockManagerMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestBlockManagerStateMachine = BlockManagerMachine.TestCase


def test_eviction_is_least_recently_used_first():
    manager = BlockManager(num_blocks=4, block_size=2, prefix_caching=True)
    for tokens in ([1, 1, 9], [2, 2, 9], [3, 3, 9]):
        seq = Sequence("r", 0, tokens, SamplingParams())
        manager.match_prefix(seq)
        assert manager.allocate(seq, 3)
        seq.num_computed_tokens = 3
        manager.cache_full_blocks(seq)
        manager.free(seq)  # its full block stays cached, its partial block goes back to the free list
    touched = Sequence("r", 0, [1, 1, 5], SamplingParams())  # makes [1, 1] the most recently used
    assert manager.match_prefix(touched) == 2
    manager.free(touched)
    taker = Sequence("r", 0, [7] * 8, SamplingParams())
    manager.match_prefix(taker)
    assert manager.allocate(taker, 6)  # 1 free block + 2 evictions: [2, 2] then [3, 3]
    survivor = Sequence("r", 0, [1, 1, 5], SamplingParams())
    assert manager.match_prefix(survivor) == 2
    for evicted in ([2, 2, 9], [3, 3, 9]):
        assert manager.match_prefix(Sequence("r", 0, evicted, SamplingParams())) == 0


def test_prefix_caching_off_never_shares():
    manager = BlockManager(num_blocks=8, block_size=2, prefix_caching=False)
    first = Sequence("r", 0, [1, 2, 3, 4, 5], SamplingParams())
    assert manager.match_prefix(first) == 0 and manager.allocate(first, 5)
    first.num_computed_tokens = 5
    manager.free(first)
    again = Sequence("r", 0, [1, 2, 3, 4, 5], SamplingParams())
    assert manager.match_prefix(again) == 0
    assert manager.num_free_blocks == 8
