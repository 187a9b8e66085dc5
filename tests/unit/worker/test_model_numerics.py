"""Our decoder's logits equal transformers' on the same checkpoint (float32, max abs diff ≤ 1e-4),
whether a sequence is prefilled at once, in chunks over a cached prefix, or decoded token by token.

In bfloat16 (the CPU default where the CPU has AMX or AVX512-BF16) both sides round differently, so the
parity tests compare with transformers in bfloat16 within a tolerance relative to the logits' scale,
and require the same greedy token at nearly every position."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from mili.worker.config import EngineConfig
from mili.worker.engine.context import set_context
from mili.worker.engine.model_runner import ModelRunner
from mili.worker.engine.scheduler import ScheduledBatch, ScheduledSequence
from mili.worker.engine.sequence import Sequence
from mili.worker.models.model_config import ModelConfig
from mili.worker.sampling_params import SamplingParams

TOLERANCE = 1e-4
BF16_RELATIVE_TOLERANCE = 0.05  # of max |logit|; transformers' own bf16 is ~0.04 away from its float32
BF16_TOP1_AGREEMENT = 0.9


def our_logits(runner: ModelRunner, token_ids: list[int], chunks: list[int]) -> torch.Tensor:
    """Logits at every position, computing the sequence in steps of the given sizes (1 = decode)."""
    seq = Sequence("numerics", 0, list(token_ids), SamplingParams())
    num_blocks = -(-len(token_ids) // runner.block_size)
    seq.block_table = list(reversed(range(num_blocks)))  # non-contiguous on purpose
    rows = []
    for size in chunks:
        entry = ScheduledSequence(seq, size)
        batch = ScheduledBatch(decodes=[entry]) if seq.is_decoding else ScheduledBatch(prefills=[entry])
        input_ids, positions, context, _ = runner._prepare(batch)
        set_context(context)
        try:
            with torch.inference_mode():
                rows.append(runner.model.compute_logits(runner.model(input_ids, positions)))
        finally:
            set_context(None)
        seq.num_computed_tokens += size
    return torch.cat(rows)


def reference_logits(
    model_dir: Path, token_ids: list[int], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    architecture = ModelConfig.from_dir(model_dir).architecture
    model = getattr(transformers, architecture).from_pretrained(model_dir, dtype=dtype).eval()
    with torch.no_grad():
        return model(torch.tensor([token_ids])).logits[0]


def make_runner(
    model_dir: Path, num_blocks: int = 64, dtype: str = "float32", kernels: str = "torch"
) -> ModelRunner:
    config = EngineConfig(model=str(model_dir), num_kv_blocks=num_blocks, kernels=kernels, dtype=dtype)
    return ModelRunner(config, model_dir, ModelConfig.from_dir(model_dir))


@pytest.mark.parametrize("kernels", ["torch", "cpu"])
@pytest.mark.parametrize("architecture", ["Qwen3ForCausalLM", "Qwen2ForCausalLM", "LlamaForCausalLM"])
def test_logits_match_transformers_for_every_way_of_computing(
    tiny_model_dirs, architecture, kernels, request
):
    if kernels == "cpu":
        request.getfixturevalue("cpu_kernels_built")
    model_dir = tiny_model_dirs[architecture]
    vocab = ModelConfig.from_dir(model_dir).vocab_size
    token_ids = [(i * 37 + 11) % vocab for i in range(70)]
    expected = reference_logits(model_dir, token_ids)
    runner = make_runner(model_dir, kernels=kernels)
    for chunks in ([70], [33, 17, 20], [50] + [1] * 20):
        diff = (our_logits(runner, token_ids, chunks) - expected).abs().max().item()
        assert diff <= TOLERANCE, f"{architecture} on {kernels} chunks={chunks}: max abs diff {diff}"


def test_qwen3_config_reads_transformers_4_and_5_spellings(tiny_qwen3_dir):
    import json

    raw = json.loads((tiny_qwen3_dir / "config.json").read_text())
    v4 = {k: v for k, v in raw.items() if k not in ("rope_parameters", "dtype")}
    v4.update(rope_theta=123456.0, torch_dtype="bfloat16")
    v5 = {**raw, "rope_parameters": {"rope_theta": 123456.0, "rope_type": "default"}, "dtype": "bfloat16"}
    v5.pop("rope_theta", None)
    for spelling in (v4, v5):
        config = ModelConfig.from_dict(spelling)
        assert config.rope_theta == 123456.0
        assert config.torch_dtype == torch.bfloat16
        assert config.head_dim == 32 and config.qk_norm and config.tie_word_embeddings


def test_sharded_checkpoint_loads_like_a_single_file(tiny_qwen3_dir, tmp_path):
    model = transformers.Qwen3ForCausalLM.from_pretrained(tiny_qwen3_dir, dtype=torch.float32)
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    token_ids = list(range(1, 30))
    single = our_logits(make_runner(tiny_qwen3_dir), token_ids, [29])
    sharded = our_logits(make_runner(tmp_path), token_ids, [29])
    assert torch.equal(single, sharded)


def test_smollm2_logits_match_transformers(smollm2_dir):
    token_ids = [1, 504, 3575, 282, 4649, 314, 1326, 30, 2, 198, *range(1000, 1030)]
    expected = reference_logits(smollm2_dir, token_ids)
    runner = make_runner(smollm2_dir, num_blocks=8)
    diff = (our_logits(runner, token_ids, [24, *[1] * 16]) - expected).abs().max().item()
    assert diff <= TOLERANCE, f"max abs diff {diff}"


def assert_bf16_parity(ours: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    ours, expected = ours.float(), expected.float()
    diff = (ours - expected).abs().max().item()
    limit = BF16_RELATIVE_TOLERANCE * expected.abs().max().item()
    agreement = (ours.argmax(-1) == expected.argmax(-1)).float().mean().item()
    assert diff <= limit, f"{what}: max abs diff {diff} > {limit}"
    assert agreement >= BF16_TOP1_AGREEMENT, f"{what}: greedy tokens agree at only {agreement:.0%}"


@pytest.mark.parametrize("kernels", ["torch", "cpu"])
@pytest.mark.parametrize("architecture", ["Qwen3ForCausalLM", "Qwen2ForCausalLM", "LlamaForCausalLM"])
def test_bf16_logits_match_transformers_bf16(tiny_model_dirs, architecture, kernels, request):
    if kernels == "cpu":
        request.getfixturevalue("cpu_kernels_built")
    model_dir = tiny_model_dirs[architecture]
    vocab = ModelConfig.from_dir(model_dir).vocab_size
    token_ids = [(i * 37 + 11) % vocab for i in range(70)]
    expected = reference_logits(model_dir, token_ids, torch.bfloat16)
    runner = make_runner(model_dir, dtype="bfloat16", kernels=kernels)
    ours = our_logits(runner, token_ids, [50] + [1] * 20)
    assert ours.dtype == torch.bfloat16
    assert_bf16_parity(ours, expected, f"{architecture} on {kernels}")


@pytest.mark.parametrize("kernels", ["torch", "cpu"])
def test_smollm2_bf16_logits_match_transformers_bf16(smollm2_dir, kernels, request):
    if kernels == "cpu":
        request.getfixturevalue("cpu_kernels_built")
    token_ids = [1, 504, 3575, 282, 4649, 314, 1326, 30, 2, 198, *range(1000, 1030)]
    expected = reference_logits(smollm2_dir, token_ids, torch.bfloat16)
    runner = make_runner(smollm2_dir, num_blocks=8, dtype="bfloat16", kernels=kernels)
    assert_bf16_parity(our_logits(runner, token_ids, [24, *[1] * 16]), expected, f"SmolLM2 on {kernels}")
