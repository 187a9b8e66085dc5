"""`TorchBackend` behind the CUDA launchers' own argument checks: the CPU proof of the GPU call path.

Every op first runs the check `CudaBackend` runs before its launch (`mili.kernels.cuda_checks`), against
the tensors' own device, then computes with the torch reference. Driven by the whole engine on CPU, any
argument the engine would hand a CUDA kernel that a launcher refuses (a strided view, a wrong dtype, an
unsupported head size) fails here first, in CI, without a GPU.
"""

from __future__ import annotations

from collections import Counter

import torch

from mili.kernels import cuda_checks as checks
from mili.kernels.torch_ops import TorchBackend


class CheckedTorchBackend(TorchBackend):
    """Torch ops with the CUDA argument checks in front; ``calls`` counts checked calls per op."""

    name = "checked-torch"

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.calls: Counter[str] = Counter()

    def rms_norm(
        self, x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        checks.check_rms_norm(x, weight, residual, self.device)
        self.calls["rms_norm"] += 1
        return super().rms_norm(x, weight, eps, residual)

    def fused_add_rms_norm(
        self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> torch.Tensor:
        checks.check_fused_add_rms_norm(x, residual, weight, self.device)
        self.calls["fused_add_rms_norm"] += 1
        return super().fused_add_rms_norm(x, residual, weight, eps)

    def rotary_embedding(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_sin_cache: torch.Tensor
    ) -> None:
        checks.check_rotary(positions, q, k, cos_sin_cache, self.device)
        self.calls["rotary_embedding"] += 1
        super().rotary_embedding(positions, q, k, cos_sin_cache)

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
        checks.check_qk_norm_rotary(positions, q, k, q_weight, k_weight, cos_sin_cache, self.device)
        self.calls["qk_norm_rotary"] += 1
        return super().qk_norm_rotary(positions, q, k, q_weight, k_weight, eps, cos_sin_cache)

    def silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        checks.check_silu_and_mul(x, self.device)
        self.calls["silu_and_mul"] += 1
        return super().silu_and_mul(x)

    def store_kv(
        self,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        checks.check_store_kv(k, v, k_cache, v_cache, slot_mapping, self.device)
        self.calls["store_kv"] += 1
        super().store_kv(k, v, k_cache, v_cache, slot_mapping)

    def decode_attention(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        block_tables: torch.Tensor,
        context_lens: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        checks.check_decode(q, k_cache, v_cache, block_tables, context_lens, self.device)
        checks.check_decode_splits(block_tables, k_cache.shape[1])
        self.calls["decode_attention"] += 1
        return super().decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale)

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
        checks.check_prefill(q, k_cache, v_cache, cu_seqlens_q, context_lens, block_tables, self.device)
        self.calls["prefill_attention"] += 1
        return super().prefill_attention(q, k_cache, v_cache, cu_seqlens_q, context_lens, block_tables, scale)
