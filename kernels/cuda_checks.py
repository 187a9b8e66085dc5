"""Argument checks for the CUDA kernels, run before every launch (pure torch: testable on CPU).

A kernel handed the wrong shape reads or writes out of bounds instead of failing, so each op checks
shapes, dtypes, device and memory layout here and raises a ValueError that names the op and argument.
The kernels' launch signatures (`SIGNATURES`, `SOURCE_OF`) are declared here too, once, pycuda-free.
"""

from __future__ import annotations

import math

import torch

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
TENSOR_CORE_DTYPES = (torch.float16, torch.bfloat16)
HEAD_DIMS = (64, 128)
QK_NORM_HEAD_DIMS = (16, 32, 64, 128, 256, 512)  # head_dim / 16 threads per head: a power of two <= 32
ALIGNMENT = 16  # bytes: kernels move 16-byte words
DECODE_PARTITION = 512  # kPartition in decode_attention.cu: context tokens per split-K partition
DECODE_MAX_SPLITS = 1024  # kMaxSplits

DTYPE_SUFFIX = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}

# Each kernel's parameters as PyCUDA prepared-call struct codes (P pointer, i int32, q int64, f float32),
# and the source (cubin stem) that exports it; tests/unit/kernels/test_cuda_build.py checks both against
# the C declarations in kernels/cuda/*.cu.
SIGNATURES = {
    "rms_norm": "PPPPPiif",
    "fused_add_rms_norm": "PPPPiif",
    "qk_norm_rotary": "PPPPPPPPqqiiiif",
    "silu_and_mul": "PPi",
    "rotary_embedding": "PPPPqqiii",
    "store_kv": "PPPPPqqi",
    "decode_attention": "PPPPPPPPPqiiiif",
    "decode_reduce": "PPPPPii",
    "prefill_attention": "PPPPPPPqiiiiif",
}
SOURCE_OF = {
    "rms_norm": "elementwise",
    "fused_add_rms_norm": "elementwise",
    "qk_norm_rotary": "elementwise",
    "silu_and_mul": "elementwise",
    "rotary_embedding": "elementwise",
    "store_kv": "elementwise",
    "decode_attention": "decode_attention",
    "decode_reduce": "decode_attention",
    "prefill_attention": "prefill_attention",
}


def fail(op: str, message: str) -> ValueError:
    return ValueError(f"{op}: {message}")


def check_tensor(
    op: str,
    name: str,
    tensor: torch.Tensor,
    device: torch.device,
    *,
    ndim: int,
    dtypes: tuple[torch.dtype, ...],
    contiguous: bool = True,
) -> None:
    """Device, rank, dtype and layout of one argument. ``contiguous=False`` allows a strided first
    dimension (e.g. q/k/v sliced out of a fused qkv projection) but needs the rest dense."""
    if not isinstance(tensor, torch.Tensor):
        raise fail(op, f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.device != device:
        raise fail(op, f"{name} is on {tensor.device}, the CUDA backend runs on {device}")
    if tensor.dim() != ndim:
        raise fail(op, f"{name} must have {ndim} dims, got shape {tuple(tensor.shape)}")
    if tensor.dtype not in dtypes:
        names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise fail(op, f"{name} has dtype {tensor.dtype}, expected one of {names}")
    if contiguous:
        if not tensor.is_contiguous():
            raise fail(
                op, f"{name} must be contiguous (shape {tuple(tensor.shape)}, stride {tensor.stride()})"
            )
    elif tensor.dim() > 1 and not tensor[0].is_contiguous():
        raise fail(op, f"{name} must be dense after its first dim (stride {tensor.stride()})")
    if tensor.numel() and tensor.data_ptr() % ALIGNMENT:
        raise fail(op, f"{name} must start at a {ALIGNMENT}-byte aligned address")
    if not contiguous and tensor.dim() > 1 and (tensor.stride(0) * tensor.element_size()) % ALIGNMENT:
        raise fail(op, f"{name}'s first-dim stride must be a multiple of {ALIGNMENT} bytes")


def check_same_dtype(op: str, reference: torch.Tensor, **others: torch.Tensor | None) -> None:
    for name, tensor in others.items():
        if tensor is not None and tensor.dtype != reference.dtype:
            raise fail(op, f"{name} has dtype {tensor.dtype}, must match {reference.dtype}")


def check_shape(op: str, name: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != shape:
        raise fail(op, f"{name} must have shape {shape}, got {tuple(tensor.shape)}")


def check_rms_norm(
    x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None, device: torch.device
) -> None:
    check_norm("rms_norm", x, weight, residual, device)


def check_fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, device: torch.device
) -> None:
    op = "fused_add_rms_norm"
    if not isinstance(residual, torch.Tensor):
        raise fail(op, "residual must be a torch.Tensor (it is updated in place)")
    check_norm(op, x, weight, residual, device)


def check_norm(
    op: str, x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None, device: torch.device
) -> None:
    """What both norms share: contiguous rows of a multiple of 8, weight [hidden], one dtype."""
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise fail(op, "x must be a tensor with at least one dim")
    check_tensor(op, "x", x, device, ndim=x.dim(), dtypes=SUPPORTED_DTYPES)
    check_tensor(op, "weight", weight, device, ndim=1, dtypes=SUPPORTED_DTYPES)
    check_same_dtype(op, x, weight=weight, residual=residual)
    hidden = x.shape[-1]
    check_shape(op, "weight", weight, (hidden,))
    if hidden % 8:
        raise fail(op, f"hidden size {hidden} must be a multiple of 8")
    if residual is not None:
        check_tensor(op, "residual", residual, device, ndim=x.dim(), dtypes=SUPPORTED_DTYPES)
        check_shape(op, "residual", residual, tuple(x.shape))


def check_silu_and_mul(x: torch.Tensor, device: torch.device) -> None:
    op = "silu_and_mul"
    check_tensor(op, "x", x, device, ndim=2, dtypes=SUPPORTED_DTYPES)
    if x.shape[1] % 16:
        raise fail(op, f"x's last dim {x.shape[1]} must be 2 * I with I a multiple of 8")


def check_rotary(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    device: torch.device,
) -> None:
    check_rotary_inputs("rotary_embedding", positions, q, k, cos_sin_cache, device)


def check_qk_norm_rotary(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    q_weight: torch.Tensor | None,
    k_weight: torch.Tensor | None,
    cos_sin_cache: torch.Tensor,
    device: torch.device,
) -> None:
    """The rotary checks, a power-of-two head_dim (16..512: head_dim / 16 threads of a warp share a head)
    and per-head weights [D] for both q and k, or for neither."""
    op = "qk_norm_rotary"
    check_rotary_inputs(op, positions, q, k, cos_sin_cache, device)
    head_dim = q.shape[2]
    if head_dim not in QK_NORM_HEAD_DIMS:
        raise fail(op, f"head_dim {head_dim} is not supported (supported: {QK_NORM_HEAD_DIMS})")
    if (q_weight is None) != (k_weight is None):
        raise fail(op, "q_weight and k_weight must both be given (Qwen3) or both be None")
    for name, weight in (("q_weight", q_weight), ("k_weight", k_weight)):
        if weight is not None:
            check_tensor(op, name, weight, device, ndim=1, dtypes=SUPPORTED_DTYPES)
            check_same_dtype(op, q, **{name: weight})
            check_shape(op, name, weight, (head_dim,))


def check_rotary_inputs(
    op: str,
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    device: torch.device,
) -> None:
    check_tensor(op, "q", q, device, ndim=3, dtypes=SUPPORTED_DTYPES, contiguous=False)
    check_tensor(op, "k", k, device, ndim=3, dtypes=SUPPORTED_DTYPES, contiguous=False)
    check_same_dtype(op, q, k=k)
    check_tensor(op, "positions", positions, device, ndim=1, dtypes=(torch.int64, torch.int32))
    check_tensor(op, "cos_sin_cache", cos_sin_cache, device, ndim=2, dtypes=(torch.float32,))
    tokens, _, head_dim = q.shape
    if k.shape[0] != tokens or k.shape[2] != head_dim:
        raise fail(op, f"k shape {tuple(k.shape)} does not match q shape {tuple(q.shape)} in tokens/head_dim")
    check_shape(op, "positions", positions, (tokens,))
    if head_dim % 16:
        raise fail(op, f"head_dim {head_dim} must be a multiple of 16")
    if cos_sin_cache.shape[1] != head_dim:
        raise fail(op, f"cos_sin_cache must be [max_positions, {head_dim}], got {tuple(cos_sin_cache.shape)}")


def check_store_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    device: torch.device,
) -> None:
    op = "store_kv"
    check_kv_cache(op, k_cache, v_cache, device)
    for name, tensor in (("k", k), ("v", v)):
        check_tensor(op, name, tensor, device, ndim=3, dtypes=SUPPORTED_DTYPES, contiguous=False)
        check_same_dtype(op, k_cache, **{name: tensor})
        check_shape(op, name, tensor, (k.shape[0], *k_cache.shape[2:]))
    check_tensor(op, "slot_mapping", slot_mapping, device, ndim=1, dtypes=(torch.int64, torch.int32))
    check_shape(op, "slot_mapping", slot_mapping, (k.shape[0],))


def check_kv_cache(op: str, k_cache: torch.Tensor, v_cache: torch.Tensor, device: torch.device) -> None:
    check_tensor(op, "k_cache", k_cache, device, ndim=4, dtypes=SUPPORTED_DTYPES)
    check_tensor(op, "v_cache", v_cache, device, ndim=4, dtypes=SUPPORTED_DTYPES)
    check_same_dtype(op, k_cache, v_cache=v_cache)
    check_shape(op, "v_cache", v_cache, tuple(k_cache.shape))
    if k_cache.shape[3] % 8:
        raise fail(op, f"head_dim {k_cache.shape[3]} must be a multiple of 8")


def check_attention(
    op: str,
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    device: torch.device,
    dtypes: tuple[torch.dtype, ...],
) -> None:
    """What decode and prefill attention share: q [N, Hq, D] against the paged cache."""
    check_tensor(op, "q", q, device, ndim=3, dtypes=dtypes, contiguous=False)
    check_kv_cache(op, k_cache, v_cache, device)
    check_same_dtype(op, q, k_cache=k_cache)
    _, num_q_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    if head_dim not in HEAD_DIMS:
        raise fail(op, f"head_dim {head_dim} is not supported (supported: {HEAD_DIMS})")
    if k_cache.shape[3] != head_dim:
        raise fail(op, f"k_cache head_dim {k_cache.shape[3]} != q head_dim {head_dim}")
    if num_q_heads % num_kv_heads:
        raise fail(op, f"{num_q_heads} query heads are not a multiple of {num_kv_heads} kv heads")
    check_tensor(op, "block_tables", block_tables, device, ndim=2, dtypes=(torch.int32,))
    check_tensor(op, "context_lens", context_lens, device, ndim=1, dtypes=(torch.int32,))
    if block_tables.shape[0] != context_lens.shape[0]:
        raise fail(op, f"block_tables has {block_tables.shape[0]} rows for {context_lens.shape[0]} sequences")


def check_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    device: torch.device,
) -> None:
    op = "decode_attention"
    check_attention(op, q, k_cache, v_cache, block_tables, context_lens, device, SUPPORTED_DTYPES)
    if context_lens.shape[0] != q.shape[0]:
        raise fail(op, f"context_lens has {context_lens.shape[0]} entries for a batch of {q.shape[0]}")


def check_prefill(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    context_lens: torch.Tensor,
    block_tables: torch.Tensor,
    device: torch.device,
) -> None:
    op = "prefill_attention"
    if q.dtype == torch.float32:
        raise fail(op, "float32 is not supported (tensor-core kernel: float16 or bfloat16)")
    check_attention(op, q, k_cache, v_cache, block_tables, context_lens, device, TENSOR_CORE_DTYPES)
    check_tensor(op, "cu_seqlens_q", cu_seqlens_q, device, ndim=1, dtypes=(torch.int32,))
    check_shape(op, "cu_seqlens_q", cu_seqlens_q, (context_lens.shape[0] + 1,))


def decode_splits(max_context: int) -> int:
    """Context partitions for decode (split-K); 1 means no reduce pass."""
    return max(1, math.ceil(max_context / DECODE_PARTITION))


def check_decode_splits(block_tables: torch.Tensor, block_size: int) -> int:
    """The split count the block table's width implies (no device read); refused past the kernel's limit."""
    max_tokens = block_tables.shape[1] * block_size
    splits = decode_splits(max_tokens)
    if splits > DECODE_MAX_SPLITS:
        raise fail(
            "decode_attention",
            f"block_tables allow {max_tokens} tokens, "
            f"more than {DECODE_MAX_SPLITS * DECODE_PARTITION} supported",
        )
    return splits
