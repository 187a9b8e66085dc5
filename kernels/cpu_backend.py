"""`KernelBackend` on our C++ CPU kernels (kernels/cpu/ops.cpp, built by `mili.kernels.cpu_build`
once per instruction-set level; the best level the host runs is loaded).

Decode attention reads each sequence's own blocks straight from the paged cache (no gather padded to
the longest context), the elementwise ops are fused single passes (the residual add with the norm, the
per-head q/k norm with rotary), and store_kv is a row copy.
Prefill attention stays on torch's SDPA (`TorchBackend`), which is already a tiled kernel on CPU.
"""

from __future__ import annotations

import functools

import torch

from mili.kernels.cpu_build import CpuKernelBuildError, IsaLevel, cached_library, preferred_level
from mili.kernels.torch_ops import TorchBackend


@functools.cache
def load_ops(level: IsaLevel) -> object:
    """Load ``level``'s cached library once per process; raises `CpuKernelBuildError` saying how to
    build it."""
    library = cached_library(level)
    if library is None:
        raise CpuKernelBuildError(
            f"MILI's CPU kernels ({level.name}) are not built for this torch and compiler: run "
            "`python -I -m mili.kernels.cpu_build` (make venv does)"
        )
    torch.ops.load_library(str(library))
    return getattr(torch.ops, level.namespace)


class CpuBackend:
    """C++ kernels for the CPU; the torch ops in `TorchBackend` are their reference. ``level``: the
    instruction-set build to load (default: the best the host runs, or ``$MILI_CPU_ISA``)."""

    name = "cpu"

    def __init__(self, level: IsaLevel | None = None) -> None:
        self.level = level or preferred_level()
        self.ops = load_ops(self.level)
        self._torch = TorchBackend()

    def rms_norm(
        self, x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = x.contiguous()
        if residual is None:
            return self.ops.rms_norm(x, weight, eps), None
        return self.ops.add_rms_norm(x, residual.contiguous(), weight, eps)

    def fused_add_rms_norm(
        self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> torch.Tensor:
        if not residual.is_contiguous():
            raise ValueError("fused_add_rms_norm: residual must be contiguous (it is updated in place)")
        return self.ops.fused_add_rms_norm(x.contiguous(), residual, weight, eps)

    def rotary_embedding(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_sin_cache: torch.Tensor
    ) -> None:
        self.ops.rotary_embedding(positions, q, k, cos_sin_cache)

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
        return self.ops.qk_norm_rotary(positions, q, k, q_weight, k_weight, eps, cos_sin_cache)

    def silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.silu_and_mul(x.contiguous())

    def store_kv(
        self,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        self.ops.store_kv(k, v, k_cache, v_cache, slot_mapping)

    def decode_attention(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        block_tables: torch.Tensor,
        context_lens: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        return self.ops.decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale)

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
        return self._torch.prefill_attention(
            q, k_cache, v_cache, cu_seqlens_q, context_lens, block_tables, scale
        )
