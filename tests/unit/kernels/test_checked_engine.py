"""The whole engine on CPU behind the CUDA launchers' argument checks: every call the engine would make
on a GPU is one a launcher accepts (Qwen3 with q/k norm, Qwen2, Llama; bf16 and fp16; block sizes 16
and 32; prompts of 1 to 300 tokens; chunked prefill; a pool small enough to preempt)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mili.kernels import BackendChoice
from mili.kernels.backend import KERNEL_OPS
from mili.kernels.checked_backend import CheckedTorchBackend
from mili.worker import LLM, SamplingParams
from mili_testing.tiny_models import build_tiny_model

ARCHITECTURES = ("Qwen3ForCausalLM", "Qwen2ForCausalLM", "LlamaForCausalLM")
PROMPT_LENGTHS = (1, 2, 17, 64, 129, 300)
UNFUSED_OPS = {"rotary_embedding"}


@pytest.fixture(scope="module")
def head_dim_64_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The session's tiny models have head_dim 32/16; the CUDA kernels take 64 and 128."""
    root = tmp_path_factory.mktemp("tiny-d64")
    return {arch: build_tiny_model(root / arch, arch, head_dim=64) for arch in ARCHITECTURES}


@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_engine_calls_pass_the_cuda_argument_checks(
    head_dim_64_models, monkeypatch, architecture, dtype, block_size
) -> None:
    backend = CheckedTorchBackend("cpu")
    choice = BackendChoice(backend, "requested")
    monkeypatch.setattr("mili.worker.engine.model_runner.choose_backend", lambda *args, **kw: choice)
    # 12 blocks of 32 (or 24 of 16) = 384 tokens: the 300-token prompt fits, the batch does not.
    llm = LLM(
        model=str(head_dim_64_models[architecture]),
        dtype=dtype,
        device="cpu",
        block_size=block_size,
        num_kv_blocks=384 // block_size,
        max_num_batched_tokens=96,  # the long prompts are prefilled in chunks
        max_num_seqs=8,
    )
    generator = torch.Generator().manual_seed(0)
    # Prompts one token short of a block: admitted together, they all need a new block at once.
    lengths = [*PROMPT_LENGTHS, *[block_size - 1] * 6]
    prompts = [torch.randint(0, 400, (n,), generator=generator).tolist() for n in lengths]
    outputs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))
    assert [len(o.outputs[0].token_ids) for o in outputs] == [8] * len(prompts)
    # The model runs the fused ops; their unfused building blocks only in tests and the self-check.
    assert set(backend.calls) == set(KERNEL_OPS) - UNFUSED_OPS
    assert llm.engine.stats().num_preemptions > 0
