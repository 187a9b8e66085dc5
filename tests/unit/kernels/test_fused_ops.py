"""The fused ops' torch references equal the unfused path the model ran before (bit for bit: the same
rounding points), on the strided views of a fused qkv projection, in every dtype."""

from __future__ import annotations

import pytest
import torch

from mili.kernels import TorchBackend

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
torch_ops = TorchBackend()


def qkv_views(tokens: int, heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype):
    generator = torch.Generator().manual_seed(tokens)
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim, generator=generator).to(dtype)
    q = qkv[:, : heads * head_dim].view(tokens, heads, head_dim)
    k = qkv[:, heads * head_dim : (heads + kv_heads) * head_dim].view(tokens, kv_heads, head_dim)
    return qkv, q, k


def rope(head_dim: int, max_positions: int = 64) -> torch.Tensor:
    inv_freq = 1.0 / (1e6 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    freqs = torch.outer(torch.arange(max_positions).float(), inv_freq)
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1)


@pytest.mark.parametrize("qk_norm", [True, False], ids=["qwen3", "no-norm"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_qk_norm_rotary_equals_norm_then_rotary(dtype: torch.dtype, qk_norm: bool) -> None:
    tokens, heads, kv_heads, head_dim = 9, 4, 2, 64
    qkv, q, k = qkv_views(tokens, heads, kv_heads, head_dim, dtype)
    cos_sin, positions = rope(head_dim), torch.tensor([0, 1, 2, 3, 40, 5, 63, 7, 8])
    weights = (torch.rand(head_dim) + 0.5, torch.rand(head_dim) + 0.5) if qk_norm else (None, None)
    weights = tuple(w.to(dtype) if w is not None else None for w in weights)
    before = qkv.clone()

    q_fused, k_fused = torch_ops.qk_norm_rotary(positions, q, k, *weights, 1e-6, cos_sin)

    assert torch.equal(qkv, before), "the fused op must not write into the qkv projection"
    q_unfused, k_unfused = q.contiguous(), k.contiguous()
    if qk_norm:
        q_unfused = torch_ops.rms_norm(q_unfused, weights[0], 1e-6)[0]
        k_unfused = torch_ops.rms_norm(k_unfused, weights[1], 1e-6)[0]
    torch_ops.rotary_embedding(positions, q_unfused, k_unfused, cos_sin)
    assert q_fused.is_contiguous() and k_fused.is_contiguous()
    assert torch.equal(q_fused, q_unfused) and torch.equal(k_fused, k_unfused)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fused_add_rms_norm_equals_rms_norm_with_residual(dtype: torch.dtype) -> None:
    x, residual = torch.randn(5, 96).to(dtype), torch.randn(5, 96).to(dtype)
    weight = (torch.rand(96) + 0.5).to(dtype)
    expected, expected_residual = torch_ops.rms_norm(x, weight, 1e-6, residual)
    x_before = x.clone()

    out = torch_ops.fused_add_rms_norm(x, residual, weight, 1e-6)

    assert torch.equal(out, expected)
    assert torch.equal(residual, expected_residual), "the residual holds x + residual afterwards"
    assert torch.equal(x, x_before)
