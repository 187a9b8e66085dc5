"""`mili.worker.engine.model_runner`: the per-step input building that needs no model."""

from __future__ import annotations

import random

import pytest

from mili.worker.engine.model_runner import token_slots


@pytest.mark.parametrize("block_size", [1, 4, 16])
def test_token_slots_match_the_per_position_formula(block_size: int) -> None:
    rng = random.Random(block_size)
    for _ in range(200):
        length = rng.randint(1, 100)
        table = rng.sample(range(1000), -(-length // block_size))
        start = rng.randint(0, length - 1)
        end = rng.randint(start + 1, length)
        expected = [table[p // block_size] * block_size + p % block_size for p in range(start, end)]
        assert token_slots(table, block_size, start, end) == expected
