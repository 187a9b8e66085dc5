"""The radix prefix cache changes speed, never results: greedy outputs with it on equal outputs with it
off, for prompts sharing prefixes of many lengths, exact duplicates and prompts that prefix each other."""

from __future__ import annotations

import random

import pytest

from mili.worker import LLM, SamplingParams
from mili.worker.models.model_config import ModelConfig

GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module")
def prompts(tiny_qwen3_dir) -> list[list[int]]:
    vocab = ModelConfig.from_dir(tiny_qwen3_dir).vocab_size
    rng = random.Random(3)
    base = [rng.randrange(3, vocab) for _ in range(70)]
    tail = lambda n: [rng.randrange(3, vocab) for _ in range(n)]  # noqa: E731
    return [
        base,
        base,  # exact duplicate
        base[:16],  # block-aligned prefix of another prompt
        base[:37],  # unaligned prefix
        base[:16] + tail(5),
        base[:31] + tail(20),
        base + tail(9),
        base[:48],
        tail(30),
    ]


def outputs(llm: LLM, prompts: list[list[int]]) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in llm.generate(prompts, GREEDY)]


def assert_nothing_referenced(llm: LLM) -> None:
    manager = llm.engine.block_manager
    assert all(count == 0 for count in manager.ref_counts)
    assert len(manager.free_block_ids) + manager.num_cached_unreferenced == manager.num_blocks


@pytest.mark.parametrize("block_size", [8, 16])
def test_cache_on_equals_cache_off(tiny_qwen3_dir, prompts, block_size):
    plain = LLM(model=str(tiny_qwen3_dir), kernels="torch", block_size=block_size, prefix_caching=False)
    cached = LLM(model=str(tiny_qwen3_dir), kernels="torch", block_size=block_size)
    expected = outputs(plain, prompts)
    assert outputs(cached, prompts) == expected  # first pass: hits within the batch as prefixes complete
    assert outputs(cached, prompts) == expected  # second pass: every prompt finds its blocks cached
    stats = cached.engine.stats()
    assert stats.prefix_hit_tokens > 0 and stats.prefix_queried_tokens >= 2 * sum(map(len, prompts))
    assert plain.engine.stats().prefix_hit_tokens == 0
    assert_nothing_referenced(cached)


def test_one_at_a_time_requests_reuse_the_previous_ones_prefix(tiny_qwen3_dir, prompts):
    cached = LLM(model=str(tiny_qwen3_dir), kernels="torch", block_size=8)
    outputs(cached, [prompts[0]])
    before = cached.engine.stats().prefix_hit_tokens
    outputs(cached, [prompts[6]])  # base + tail: all 70 base tokens' full blocks are cached
    assert cached.engine.stats().prefix_hit_tokens - before == 64


def test_small_pool_with_heavy_eviction_completes_and_leaks_nothing(tiny_qwen3_dir, prompts):
    many = [p for p in prompts for _ in range(3)]
    plain = LLM(
        model=str(tiny_qwen3_dir), kernels="torch", block_size=8, num_kv_blocks=24, prefix_caching=False
    )
    cached = LLM(model=str(tiny_qwen3_dir), kernels="torch", block_size=8, num_kv_blocks=24)
    assert outputs(cached, many) == outputs(plain, many)
    assert cached.engine.scheduler.num_preemptions > 0
    assert_nothing_referenced(cached)
