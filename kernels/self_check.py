"""Start-up self-check: a candidate backend against the torch reference on small random inputs in the
model's own shapes (every op, the fused ones too, both attention paths, the split-K decode path too).

Run once when the CUDA backend loads, it costs well under the 2 s budget on a GPU (a few dozen
launches on inputs of a few hundred tokens). A wrong kernel is caught before the first request and
named: `SelfCheckFailed` says which op and how far off it was.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mili.kernels.backend import KernelBackend
from mili.kernels.torch_ops import TorchBackend

# atol/rtol per dtype, and the largest per-row ||actual - expected|| / ||expected|| accepted.
TOLERANCE = {torch.bfloat16: 3e-2, torch.float16: 5e-3, torch.float32: 1e-4}
ROW_RELATIVE_NORM = {torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float32: 1e-5}


@dataclass(frozen=True)
class KernelShapes:
    """What a model asks of the kernels: the shapes the self-check draws its inputs in."""

    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    dtype: torch.dtype
    qk_norm: bool = False


class SelfCheckFailed(RuntimeError):
    """The candidate disagrees with the reference (or raised) on one op."""

    def __init__(self, op: str, error: str) -> None:
        super().__init__(f"{op}: {error}")
        self.op = op
        self.error = error


def compare(op: str, actual: torch.Tensor, expected: torch.Tensor) -> None:
    """atol/rtol and a per-row relative norm (a few wrong rows in a large tensor cannot hide), with the
    tolerances of ``actual``'s dtype (``expected`` may be a float32 reference); a NaN where the
    reference has none means an element the kernel never wrote."""
    if actual.shape != expected.shape:
        raise SelfCheckFailed(op, f"shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    actual32, expected32 = actual.float(), expected.float()
    if bool(torch.isnan(actual32).any()) and not bool(torch.isnan(expected32).any()):
        raise SelfCheckFailed(op, f"{int(torch.isnan(actual32).sum())} NaN elements (unwritten output?)")
    tol = TOLERANCE[actual.dtype]
    diff = (actual32 - expected32).abs()
    bound = tol + tol * expected32.abs()
    if bool((diff > bound).any()):
        worst = int((diff - bound).argmax())
        raise SelfCheckFailed(
            op,
            f"{int((diff > bound).sum())} of {diff.numel()} elements off by more than atol=rtol={tol} "
            f"(worst: {actual32.flatten()[worst]:.5g} vs {expected32.flatten()[worst]:.5g})",
        )
    rows_a, rows_e = actual32.reshape(actual32.shape[0], -1), expected32.reshape(expected32.shape[0], -1)
    relative = (rows_a - rows_e).norm(dim=1) / rows_e.norm(dim=1).clamp(min=1e-6)
    limit = ROW_RELATIVE_NORM[actual.dtype]
    if bool((relative > limit).any()):
        raise SelfCheckFailed(op, f"row relative error {float(relative.max()):.3g} > {limit}")


class _Inputs:
    def __init__(self, shapes: KernelShapes, device: torch.device, seed: int) -> None:
        self.shapes, self.device = shapes, device
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def randn(self, *shape: int, scale: float = 1.0) -> torch.Tensor:
        x = torch.randn(*shape, generator=self.generator, device=self.device) * scale
        return x.to(self.shapes.dtype)

    def randperm(self, n: int) -> torch.Tensor:
        return torch.randperm(n, generator=self.generator, device=self.device)

    def randint(self, high: int, n: int) -> torch.Tensor:
        return torch.randint(0, high, (n,), generator=self.generator, device=self.device)


def _check_elementwise(candidate: KernelBackend, reference: KernelBackend, inputs: _Inputs) -> None:
    s = inputs.shapes
    tokens = 37
    x, residual = inputs.randn(tokens, s.hidden_size), inputs.randn(tokens, s.hidden_size)
    weight = inputs.randn(s.hidden_size, scale=0.1) + 1
    out, _ = candidate.rms_norm(x, weight, 1e-6)
    compare("rms_norm", out, reference.rms_norm(x, weight, 1e-6)[0])
    out, new_residual = candidate.rms_norm(x, weight, 1e-6, residual)
    ref_out, ref_residual = reference.rms_norm(x, weight, 1e-6, residual)
    compare("rms_norm(residual)", out, ref_out)
    compare("rms_norm(residual) residual", new_residual, ref_residual)
    residual_in_place, ref_residual_in_place = residual.clone(), residual.clone()
    out = candidate.fused_add_rms_norm(x, residual_in_place, weight, 1e-6)
    ref_out = reference.fused_add_rms_norm(x, ref_residual_in_place, weight, 1e-6)
    compare("fused_add_rms_norm", out, ref_out)
    compare("fused_add_rms_norm residual", residual_in_place, ref_residual_in_place)
    if s.qk_norm:
        heads = inputs.randn(tokens, s.num_heads, s.head_dim)
        head_weight = inputs.randn(s.head_dim, scale=0.1) + 1
        compare("rms_norm(per head)", candidate.rms_norm(heads, head_weight, 1e-6)[0],
                reference.rms_norm(heads, head_weight, 1e-6)[0])  # fmt: skip
    gate_up = inputs.randn(tokens, 2 * s.intermediate_size, scale=2.0)
    compare("silu_and_mul", candidate.silu_and_mul(gate_up), reference.silu_and_mul(gate_up))


def _check_rotary_and_store(candidate: KernelBackend, reference: KernelBackend, inputs: _Inputs) -> None:
    s = inputs.shapes
    tokens, max_positions = 37, 4096
    inv_freq = 1.0 / (1e6 ** (torch.arange(0, s.head_dim, 2, device=inputs.device).float() / s.head_dim))
    freqs = torch.outer(torch.arange(max_positions, device=inputs.device).float(), inv_freq)
    cos_sin = torch.cat((freqs.cos(), freqs.sin()), dim=-1)
    positions = inputs.randint(max_positions, tokens)
    q_size, kv_size = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
    qkv = inputs.randn(tokens, q_size + 2 * kv_size)
    q = qkv[:, :q_size].view(tokens, s.num_heads, s.head_dim)  # strided views, as the model may pass
    k = qkv[:, q_size : q_size + kv_size].view(tokens, s.num_kv_heads, s.head_dim)
    v = qkv[:, q_size + kv_size :].view(tokens, s.num_kv_heads, s.head_dim)
    q_ref, k_ref = q.clone(), k.clone()
    candidate.rotary_embedding(positions, q, k, cos_sin)
    reference.rotary_embedding(positions, q_ref, k_ref, cos_sin)
    compare("rotary_embedding q", q, q_ref)
    compare("rotary_embedding k", k, k_ref)
    _check_qk_norm_rotary(candidate, reference, inputs, positions, qkv, cos_sin)
    num_blocks = tokens // s.block_size + 4
    caches = [torch.full((num_blocks, s.block_size, s.num_kv_heads, s.head_dim), float("nan"),
                         dtype=s.dtype, device=inputs.device) for _ in range(2)]  # fmt: skip
    ref_caches = [c.clone() for c in caches]
    slots = inputs.randperm(num_blocks * s.block_size)[:tokens]
    slots[::5] = -1
    candidate.store_kv(k, v, *caches, slots)
    reference.store_kv(k, v, *ref_caches, slots)
    compare("store_kv k_cache", caches[0], ref_caches[0])
    compare("store_kv v_cache", caches[1], ref_caches[1])


def _check_qk_norm_rotary(
    candidate: KernelBackend,
    reference: KernelBackend,
    inputs: _Inputs,
    positions: torch.Tensor,
    qkv: torch.Tensor,
    cos_sin: torch.Tensor,
) -> None:
    """The fused op on the strided q/k views of qkv, with the model's norm (or none); qkv unchanged."""
    s = inputs.shapes
    tokens, q_size, kv_size = qkv.shape[0], s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
    q = qkv[:, :q_size].view(tokens, s.num_heads, s.head_dim)
    k = qkv[:, q_size : q_size + kv_size].view(tokens, s.num_kv_heads, s.head_dim)
    weights = (None, None)
    if s.qk_norm:
        weights = (inputs.randn(s.head_dim, scale=0.1) + 1, inputs.randn(s.head_dim, scale=0.1) + 1)
    before = qkv.clone()
    q_out, k_out = candidate.qk_norm_rotary(positions, q, k, *weights, 1e-6, cos_sin)
    q_ref, k_ref = reference.qk_norm_rotary(positions, q, k, *weights, 1e-6, cos_sin)
    if not torch.equal(qkv, before):
        raise SelfCheckFailed("qk_norm_rotary", "wrote into its inputs (the qkv projection)")
    compare("qk_norm_rotary q", q_out, q_ref)
    compare("qk_norm_rotary k", k_out, k_ref)


def _paged(inputs: _Inputs, context_lens: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random K/V caches and a shuffled block table covering ``context_lens``."""
    s = inputs.shapes
    per_seq = [-(-n // s.block_size) for n in context_lens]
    num_blocks = sum(per_seq) + 2
    shape = (num_blocks, s.block_size, s.num_kv_heads, s.head_dim)
    k_cache, v_cache = inputs.randn(*shape), inputs.randn(*shape)
    order = inputs.randperm(num_blocks).to(torch.int32)
    tables = torch.full((len(context_lens), max(per_seq)), -1, dtype=torch.int32, device=inputs.device)
    used = 0
    for row, n in enumerate(per_seq):
        tables[row, :n] = order[used : used + n]
        used += n
    return k_cache, v_cache, tables


def _check_attention(candidate: KernelBackend, reference: KernelBackend, inputs: _Inputs) -> None:
    s = inputs.shapes
    scale = s.head_dim**-0.5
    int32 = dict(dtype=torch.int32, device=inputs.device)
    # Decode: one short context and one past a split-K partition (512 tokens), so both paths run.
    lens = [7, 600, 33]
    k_cache, v_cache, tables = _paged(inputs, lens)
    q = inputs.randn(len(lens), s.num_heads, s.head_dim, scale=4.0)  # peaky: errors in max/sum show
    args = (q, k_cache, v_cache, tables, torch.tensor(lens, **int32), scale)
    compare("decode_attention", candidate.decode_attention(*args), reference.decode_attention(*args))
    # Prefill: a fresh prompt and a chunk after a cached prefix. (The CUDA kernel is tensor-core only:
    # a float32 model fails here, and so runs on torch.)
    q_lens, prefixes = [70, 20], [0, 90]
    lens = [n + p for n, p in zip(q_lens, prefixes, strict=True)]
    k_cache, v_cache, tables = _paged(inputs, lens)
    q = inputs.randn(sum(q_lens), s.num_heads, s.head_dim, scale=2.0)
    cu = torch.tensor([0, q_lens[0], sum(q_lens)], **int32)
    args = (q, k_cache, v_cache, cu, torch.tensor(lens, **int32), tables, scale)
    compare("prefill_attention", candidate.prefill_attention(*args), reference.prefill_attention(*args))


CHECKS: tuple[Callable[[KernelBackend, KernelBackend, _Inputs], None], ...] = (
    _check_elementwise,
    _check_rotary_and_store,
    _check_attention,
)


def run_self_check(
    candidate: KernelBackend,
    shapes: KernelShapes,
    device: torch.device,
    reference: KernelBackend | None = None,
    seed: int = 0,
) -> float:
    """Compare ``candidate`` with the torch ops on every op; returns the seconds it took.
    Raises `SelfCheckFailed` naming the first op that disagrees or raises."""
    reference = reference or TorchBackend()
    inputs = _Inputs(shapes, device, seed)
    started = time.perf_counter()
    for check in CHECKS:
        try:
            check(candidate, reference, inputs)
        except SelfCheckFailed:
            raise
        except Exception as exc:  # a launcher refusing the model's shapes is a failure too
            raise SelfCheckFailed(
                check.__name__.removeprefix("_check_"), f"{type(exc).__name__}: {exc}"
            ) from exc
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started
