"""The CUDA launchers' argument checks refuse what the kernels would misread, with a clear message."""

from __future__ import annotations

import pytest
import torch

from mili.kernels import cuda_checks as checks

CPU = torch.device("cpu")  # the checks compare against the backend's device; CPU stands in here
META = torch.device("meta")


def cache(
    blocks: int = 4, block_size: int = 16, kv_heads: int = 2, head_dim: int = 128, dtype=torch.bfloat16
):
    return torch.zeros(blocks, block_size, kv_heads, head_dim, dtype=dtype)


def decode_args(**overrides):
    args = {
        "q": torch.zeros(3, 4, 128, dtype=torch.bfloat16),
        "k_cache": cache(),
        "v_cache": cache(),
        "block_tables": torch.zeros(3, 2, dtype=torch.int32),
        "context_lens": torch.ones(3, dtype=torch.int32),
        "device": CPU,
    }
    return {**args, **overrides}


def test_valid_decode_arguments_pass() -> None:
    checks.check_decode(**decode_args())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"device": META}, "q is on cpu, the CUDA backend runs on meta"),
        ({"q": torch.zeros(3, 4, 96, dtype=torch.bfloat16)}, "head_dim 96 is not supported"),
        ({"q": torch.zeros(3, 3, 128, dtype=torch.bfloat16)}, "3 query heads are not a multiple of 2"),
        ({"q": torch.zeros(3, 4, 128, dtype=torch.float16)}, "k_cache has dtype torch.bfloat16"),
        ({"block_tables": torch.zeros(3, 2, dtype=torch.int64)}, "block_tables has dtype torch.int64"),
        ({"context_lens": torch.ones(2, dtype=torch.int32)}, "block_tables has 3 rows for 2 sequences"),
        ({"k_cache": cache().transpose(0, 1)}, "k_cache must be contiguous"),
        ({"v_cache": cache(blocks=5)}, r"v_cache must have shape \(4, 16, 2, 128\)"),
        (
            {"q": torch.zeros(3, 128, 4, dtype=torch.bfloat16).transpose(1, 2)},
            "q must be dense after its first dim",
        ),
    ],
)
def test_bad_decode_arguments_are_refused(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=f"^decode_attention: .*{message}"):
        checks.check_decode(**decode_args(**overrides))


def test_q_sliced_from_fused_qkv_is_accepted() -> None:
    qkv = torch.zeros(3, (4 + 2 + 2) * 128, dtype=torch.bfloat16)
    q = qkv[:, : 4 * 128].view(3, 4, 128)
    assert not q.is_contiguous()
    checks.check_decode(**decode_args(q=q))


def test_prefill_refuses_float32_and_checks_cu_seqlens() -> None:
    args = {
        "q": torch.zeros(5, 4, 128, dtype=torch.bfloat16),
        "k_cache": cache(),
        "v_cache": cache(),
        "cu_seqlens_q": torch.tensor([0, 2, 5], dtype=torch.int32),
        "context_lens": torch.tensor([2, 3], dtype=torch.int32),
        "block_tables": torch.zeros(2, 2, dtype=torch.int32),
        "device": CPU,
    }
    checks.check_prefill(**args)
    with pytest.raises(ValueError, match="float32 is not supported"):
        checks.check_prefill(**{**args, "q": args["q"].float()})
    with pytest.raises(ValueError, match=r"cu_seqlens_q must have shape \(3,\)"):
        checks.check_prefill(**{**args, "cu_seqlens_q": torch.tensor([0, 5], dtype=torch.int32)})


def test_rms_norm_checks_weight_and_residual() -> None:
    x = torch.zeros(4, 64, dtype=torch.float16)
    checks.check_rms_norm(x, torch.ones(64, dtype=torch.float16), x.clone(), CPU)
    with pytest.raises(ValueError, match=r"rms_norm: weight must have shape \(64,\)"):
        checks.check_rms_norm(x, torch.ones(32, dtype=torch.float16), None, CPU)
    with pytest.raises(ValueError, match=r"rms_norm: residual has dtype torch\.float32"):
        checks.check_rms_norm(x, torch.ones(64, dtype=torch.float16), x.float(), CPU)
    with pytest.raises(ValueError, match="hidden size 12 must be a multiple of 8"):
        checks.check_rms_norm(torch.zeros(2, 12), torch.ones(12), None, CPU)


def test_rotary_store_kv_and_silu_checks() -> None:
    q, k = torch.zeros(3, 4, 64), torch.zeros(3, 2, 64)
    checks.check_rotary(torch.arange(3), q, k, torch.zeros(10, 64), CPU)
    with pytest.raises(ValueError, match=r"rotary_embedding: cos_sin_cache must be \[max_positions, 64\]"):
        checks.check_rotary(torch.arange(3), q, k, torch.zeros(10, 32), CPU)
    with pytest.raises(ValueError, match=r"cos_sin_cache has dtype torch\.float16"):
        checks.check_rotary(torch.arange(3), q, k, torch.zeros(10, 64, dtype=torch.float16), CPU)
    kv = torch.zeros(3, 2, 128, dtype=torch.bfloat16)
    checks.check_store_kv(kv, kv, cache(), cache(), torch.tensor([0, -1, 5]), CPU)
    with pytest.raises(ValueError, match=r"store_kv: slot_mapping must have shape \(3,\)"):
        checks.check_store_kv(kv, kv, cache(), cache(), torch.tensor([0, 1]), CPU)
    with pytest.raises(ValueError, match="silu_and_mul: x's last dim 24"):
        checks.check_silu_and_mul(torch.zeros(2, 24), CPU)


def test_fused_add_rms_norm_needs_a_matching_residual() -> None:
    x, weight = torch.zeros(4, 64, dtype=torch.bfloat16), torch.ones(64, dtype=torch.bfloat16)
    checks.check_fused_add_rms_norm(x, x.clone(), weight, CPU)
    with pytest.raises(ValueError, match=r"fused_add_rms_norm: residual must be a torch\.Tensor"):
        checks.check_fused_add_rms_norm(x, None, weight, CPU)
    with pytest.raises(ValueError, match=r"fused_add_rms_norm: residual must have shape \(4, 64\)"):
        checks.check_fused_add_rms_norm(x, torch.zeros(2, 64, dtype=torch.bfloat16), weight, CPU)
    with pytest.raises(ValueError, match="fused_add_rms_norm: residual must be contiguous"):
        checks.check_fused_add_rms_norm(x, torch.zeros(64, 4, dtype=torch.bfloat16).t(), weight, CPU)


def test_qk_norm_rotary_takes_strided_qkv_views_and_both_weights_or_neither() -> None:
    qkv = torch.zeros(3, (4 + 2 + 2) * 64, dtype=torch.bfloat16)
    q, k = qkv[:, :256].view(3, 4, 64), qkv[:, 256:384].view(3, 2, 64)
    weight, rope = torch.ones(64, dtype=torch.bfloat16), torch.zeros(10, 64)
    checks.check_qk_norm_rotary(torch.arange(3), q, k, weight, weight, rope, CPU)
    checks.check_qk_norm_rotary(torch.arange(3), q, k, None, None, rope, CPU)
    with pytest.raises(ValueError, match="qk_norm_rotary: q_weight and k_weight must both be given"):
        checks.check_qk_norm_rotary(torch.arange(3), q, k, weight, None, rope, CPU)
    with pytest.raises(ValueError, match=r"qk_norm_rotary: k_weight must have shape \(64,\)"):
        checks.check_qk_norm_rotary(torch.arange(3), q, k, weight, weight[:32], rope, CPU)
    with pytest.raises(ValueError, match=r"qk_norm_rotary: q_weight has dtype torch\.float32"):
        checks.check_qk_norm_rotary(torch.arange(3), q, k, weight.float(), weight, rope, CPU)
    q48, k48 = torch.zeros(3, 4, 48), torch.zeros(3, 2, 48)
    with pytest.raises(ValueError, match="qk_norm_rotary: head_dim 48 is not supported"):
        checks.check_qk_norm_rotary(torch.arange(3), q48, k48, None, None, torch.zeros(10, 48), CPU)
