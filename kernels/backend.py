"""The kernel backend interface: every op the model runs through, with its shapes.

Implementations: `TorchBackend` (the reference: its ops define correctness), `CudaBackend` (our CUDA C
through PyCUDA) and `CpuBackend` (our C++). The model runs the fused ops (`fused_add_rms_norm`,
`qk_norm_rotary`); the unfused ones (`rms_norm` with ``residual``, `rotary_embedding`) stay as the
building blocks the fused ones are tested against. Conventions shared by both:

- token-major activations: ``[num_tokens, ...]``;
- the paged KV cache of one layer is a pair of tensors ``[num_blocks, block_size, num_kv_heads, head_dim]``;
- a *slot* is ``block_id * block_size + offset``; slot ``-1`` means "do not store" (padding);
- ``block_tables`` is ``int32 [num_seqs, max_blocks_per_seq]`` padded with ``-1`` (never read past the
  sequence's context length);
- ``context_lens`` is ``int32 [num_seqs]``: tokens in the cache for each sequence *including* this step's
  new tokens, which are the last ``q_len`` positions of that context.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class KernelBackend(Protocol):
    """The ops a model layer needs; see the module docstring for layouts."""

    name: str

    def rms_norm(
        self, x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """RMSNorm over the last dim. With ``residual``: ``s = x + residual`` is normalized and also
        returned as the new residual; without it, returns ``(norm(x), None)``."""
        ...

    def fused_add_rms_norm(
        self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> torch.Tensor:
        """In place ``residual += x`` (rounded to its dtype), then returns ``rms_norm(residual)`` as a new
        tensor: one pass where `rms_norm` with ``residual`` allocates and writes the sum anew."""
        ...

    def rotary_embedding(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_sin_cache: torch.Tensor
    ) -> None:
        """Rotate ``q [T, Hq, D]`` and ``k [T, Hk, D]`` in place (NeoX style: halves rotated together).
        ``cos_sin_cache`` is float32 ``[max_positions, D]``: cos in the first half, sin in the second."""
        ...

    def qk_norm_rotary(
        self,
        positions: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        q_weight: torch.Tensor | None,
        k_weight: torch.Tensor | None,
        eps: float,
        cos_sin_cache: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head RMS norm of ``q [T, Hq, D]`` and ``k [T, Hk, D]`` (weights ``[D]``; both ``None``: no
        norm, as in Qwen2/Llama), then rotary as `rotary_embedding`; returns new dense q and k. q and k
        may be strided views of a fused qkv projection (dense heads); they are left unchanged."""
        ...

    def silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        """``x [T, 2I]`` → ``silu(x[:, :I]) * x[:, I:]`` as ``[T, I]``."""
        ...

    def store_kv(
        self,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        """Scatter new ``k, v [T, Hk, D]`` into the paged cache at ``slot_mapping`` (int64 ``[T]``)."""
        ...

    def decode_attention(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        block_tables: torch.Tensor,
        context_lens: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        """One query token per sequence: ``q [B, Hq, D]`` → ``[B, Hq, D]`` over each sequence's paged
        context (GQA: query head h reads kv head ``h // (Hq // Hk)``)."""
        ...

    def prefill_attention(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        cu_seqlens_q: torch.Tensor,
        context_lens: torch.Tensor,
        block_tables: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        """Causal attention for a variable-length batch of new tokens ``q [T, Hq, D]`` (sequence i owns
        rows ``cu_seqlens_q[i]:cu_seqlens_q[i+1]``, int32 ``[B+1]``) over the cached prefix plus the new
        tokens, all already stored in the paged cache. Returns ``[T, Hq, D]``."""
        ...


# The interface's op names, in declaration order (the self-check and the tests cover each of them).
KERNEL_OPS = tuple(
    name for name, member in vars(KernelBackend).items() if callable(member) and not name.startswith("_")
)
