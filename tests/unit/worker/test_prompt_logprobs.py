"""Prompt logprobs equal transformers' (log_softmax of its logits, float32) on the tiny random Qwen3,
whether the prompt is prefilled at once, in chunks, next to other sequences, over a prompt the prefix
cache already holds, or after a preemption."""

from __future__ import annotations

import pytest
import torch
import transformers

from mili.worker import LLM, SamplingParams

TOLERANCE = 1e-4
PROMPT_LEN = 70


@pytest.fixture(scope="module")
def prompt(tiny_qwen3_dir) -> list[int]:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(3, 200, (PROMPT_LEN,), generator=generator).tolist()


@pytest.fixture(scope="module")
def reference(tiny_qwen3_dir, prompt) -> torch.Tensor:
    """transformers' log-probabilities at every prompt position, [PROMPT_LEN, vocab]."""
    model = transformers.Qwen3ForCausalLM.from_pretrained(tiny_qwen3_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([prompt])).logits[0].float(), dim=-1)


def _llm(model_dir, **engine_args) -> LLM:
    settings = dict(model=str(model_dir), device="cpu", dtype="float32", max_model_len=256, kernels="torch")
    return LLM(**{**settings, **engine_args})


def _check(entries, prompt: list[int], reference: torch.Tensor, num_top: int) -> None:
    assert len(entries) == len(prompt) and entries[0] is None
    for position in range(1, len(prompt)):
        entry, expected = entries[position], reference[position - 1]
        assert entry.token_id == prompt[position]
        assert entry.logprob == pytest.approx(float(expected[prompt[position]]), abs=TOLERANCE)
        assert entry.rank == int((expected > expected[prompt[position]]).sum()) + 1
        top_values, top_ids = expected.topk(num_top)
        assert list(entry.top) == top_ids.tolist()
        assert list(entry.top.values()) == pytest.approx(top_values.tolist(), abs=TOLERANCE)


@pytest.fixture(scope="module")
def chunked(tiny_qwen3_dir) -> LLM:
    """Chunks of 16 tokens, a pool small enough to preempt, the prefix cache on."""
    return _llm(tiny_qwen3_dir, max_num_batched_tokens=16, num_kv_blocks=12, block_size=16, max_model_len=160)


def test_whole_prefill_matches_transformers(tiny_qwen3_dir, prompt, reference):
    llm = _llm(tiny_qwen3_dir)
    (output,) = llm.generate(prompt, SamplingParams(max_tokens=2, prompt_logprobs=3))
    _check(output.prompt_logprobs, prompt, reference, 3)
    (plain,) = llm.generate(prompt, SamplingParams(max_tokens=2))
    assert plain.prompt_logprobs is None


def test_chunked_prefill_over_a_cached_prefix_matches_transformers(chunked, prompt, reference):
    chunked.generate(prompt, SamplingParams(max_tokens=1))  # the prefix cache now holds the prompt
    hits_before = chunked.engine.block_manager.stats.hit_tokens
    (output,) = chunked.generate(prompt, SamplingParams(max_tokens=2, prompt_logprobs=0, n=2))
    _check(output.prompt_logprobs, prompt, reference, 0)
    assert chunked.engine.block_manager.stats.hit_tokens - hits_before <= PROMPT_LEN  # the 2nd sample only


def test_prompt_logprobs_survive_a_preemption(chunked, prompt, reference):
    """Three long requests in a pool that holds only two: some are preempted and recomputed."""
    preemptions = chunked.engine.scheduler.num_preemptions
    params = SamplingParams(max_tokens=60, ignore_eos=True, prompt_logprobs=1, temperature=0)
    outputs = chunked.generate([prompt] * 3, params)
    assert chunked.engine.scheduler.num_preemptions > preemptions
    for output in outputs:
        _check(output.prompt_logprobs, prompt, reference, 1)


def test_out_of_range_is_refused():
    with pytest.raises(ValueError, match="prompt_logprobs"):
        SamplingParams(prompt_logprobs=21)
