"""Greedy generation equals transformers' `generate` (float32), token for token, for a batch of prompts
of different lengths, including with chunked prefill and with a KV pool so small that preemption happens,
on the torch ops and on our C++ CPU kernels."""

from __future__ import annotations

import random

import pytest
import torch
import transformers

from mili.worker import LLM, SamplingParams
from mili.worker.models.model_config import ModelConfig

PROMPT_LENGTHS = (3, 9, 17, 30, 45, 64, 80, 100)
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def prompts(tiny_qwen3_dir) -> list[list[int]]:
    vocab = ModelConfig.from_dir(tiny_qwen3_dir).vocab_size
    rng = random.Random(7)
    return [[rng.randrange(3, vocab) for _ in range(length)] for length in PROMPT_LENGTHS]


@pytest.fixture(scope="module")
def expected(tiny_qwen3_dir, prompts) -> list[list[int]]:
    model = transformers.Qwen3ForCausalLM.from_pretrained(tiny_qwen3_dir, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    outputs = []
    for prompt in prompts:
        generated = model.generate(
            torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0
        )
        outputs.append(generated[0, len(prompt) :].tolist())
    return outputs


GREEDY = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)


@pytest.mark.parametrize(
    "engine_args",
    [
        pytest.param({}, id="one-batch"),
        pytest.param({"max_num_batched_tokens": 32}, id="chunked-prefill"),
        pytest.param({"num_kv_blocks": 12, "block_size": 16}, id="tiny-pool-preempts"),
        pytest.param({"num_kv_blocks": 40, "block_size": 8, "max_num_seqs": 3}, id="few-seqs"),
    ],
)
@pytest.mark.parametrize("kernels", ["torch", "cpu"])
def test_greedy_batch_equals_transformers(tiny_qwen3_dir, prompts, expected, engine_args, kernels, request):
    if kernels == "cpu":
        request.getfixturevalue("cpu_kernels_built")
    llm = LLM(model=str(tiny_qwen3_dir), kernels=kernels, dtype="float32", **engine_args)
    outputs = llm.generate(prompts, GREEDY)
    for prompt_index, (output, reference) in enumerate(zip(outputs, expected, strict=True)):
        completion = output.outputs[0]
        assert completion.token_ids == reference, (
            f"prompt {prompt_index} ({len(prompts[prompt_index])} tokens)"
        )
        assert completion.finish_reason == "length"
    if "num_kv_blocks" in engine_args and engine_args["num_kv_blocks"] == 12:
        assert llm.engine.scheduler.num_preemptions > 0
    assert not llm.engine.has_unfinished_requests()
    assert all(count == 0 for count in llm.engine.block_manager.ref_counts)


def test_a_request_that_can_never_fit_is_refused(tiny_qwen3_dir):
    llm = LLM(model=str(tiny_qwen3_dir), kernels="torch", dtype="float32", num_kv_blocks=4, block_size=16)
    assert llm.engine.max_model_len == 64
    with pytest.raises(ValueError, match="context limit of 64"):
        llm.generate([[5] * 40], SamplingParams(max_tokens=30))
    with pytest.raises(ValueError, match="prompt has 70 tokens"):
        llm.generate([[5] * 70], SamplingParams(max_tokens=1))
    # max_tokens=None runs up to the context limit and stops with "length".
    (output,) = llm.generate([[5] * 40], SamplingParams(max_tokens=None, ignore_eos=True, temperature=0))
    assert len(output.outputs[0].token_ids) == 24 and output.outputs[0].finish_reason == "length"


def test_explicit_max_model_len_beyond_the_pool_is_an_error(tiny_qwen3_dir):
    with pytest.raises(ValueError, match="exceeds what the KV pool holds"):
        LLM(model=str(tiny_qwen3_dir), kernels="torch", num_kv_blocks=4, block_size=16, max_model_len=100)


def test_paging_wastes_at_most_one_partial_block_per_sequence(tiny_qwen3_dir, prompts):
    llm = LLM(model=str(tiny_qwen3_dir), kernels="torch", block_size=8, max_num_batched_tokens=40)
    engine = llm.engine
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, GREEDY)
    steps = 0
    while engine.has_unfinished_requests():
        engine.step()
        steps += 1
        for seq in engine.scheduler.running:
            reserved = len(seq.block_table) * engine.config.block_size
            assert 0 <= reserved - seq.num_computed_tokens < engine.config.block_size
    assert steps > len(prompts)  # chunked prefill and decoding really went through many steps
