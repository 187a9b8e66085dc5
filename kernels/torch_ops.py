"""Reference implementations of the kernel ops in plain PyTorch (the CPU path).

Written for clarity first: the CUDA kernels are checked against these.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class TorchBackend:
    """`KernelBackend` in plain PyTorch; works on any device."""

    name = "torch"

    def rms_norm(
        self, x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if residual is not None:
            x = x + residual
            residual = x
        return normalize(x, weight, eps), residual

    def fused_add_rms_norm(
        self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> torch.Tensor:
        residual.add_(x)
        return normalize(residual, weight, eps)

    def rotary_embedding(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_sin_cache: torch.Tensor
    ) -> None:
        cos, sin = cos_sin_cache[positions].unsqueeze(1).chunk(2, dim=-1)
        for x in (q, k):
            x.copy_(rotate(x, cos, sin))

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
        cos, sin = cos_sin_cache[positions].unsqueeze(1).chunk(2, dim=-1)
        if q_weight is not None:
            q, k = normalize(q, q_weight, eps), normalize(k, k_weight, eps)
        return rotate(q, cos, sin), rotate(k, cos, sin)

    def silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up

    def store_kv(
        self,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        keep = slot_mapping >= 0
        slots = slot_mapping[keep]
        k_cache.view(-1, *k_cache.shape[2:]).index_copy_(0, slots, k[keep])
        v_cache.view(-1, *v_cache.shape[2:]).index_copy_(0, slots, v[keep])

    def decode_attention(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        block_tables: torch.Tensor,
        context_lens: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        max_len = int(context_lens.max())
        keys = gather_context(k_cache, block_tables, max_len)  # [B, L, Hk, D]
        values = gather_context(v_cache, block_tables, max_len)
        positions = torch.arange(max_len, device=q.device)
        mask = positions[None, :] < context_lens[:, None].to(positions.dtype)  # [B, L]
        out = F.scaled_dot_product_attention(
            q.unsqueeze(2),  # [B, Hq, 1, D]
            keys.transpose(1, 2),
            values.transpose(1, 2),
            attn_mask=mask[:, None, None, :],
            scale=scale,
            enable_gqa=True,
        )
        return out.squeeze(2)

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
        out = torch.empty_like(q)
        starts = cu_seqlens_q.tolist()
        for i, context_len in enumerate(context_lens.tolist()):
            begin, end = starts[i], starts[i + 1]
            q_len = end - begin
            keys = gather_context(k_cache, block_tables[i : i + 1], context_len)[0]
            values = gather_context(v_cache, block_tables[i : i + 1], context_len)[0]
            prefix = context_len - q_len
            mask = None
            if prefix > 0:
                query_pos = torch.arange(prefix, context_len, device=q.device)
                mask = torch.arange(context_len, device=q.device)[None, :] <= query_pos[:, None]
            # 4-D [1, H, L, D]: on the CPU only the 4-D form reaches torch's flash kernel (3-D takes
            # the math path, about 10x slower, materializing the scores and the causal mask).
            out[begin:end] = F.scaled_dot_product_attention(
                q[begin:end].transpose(0, 1).unsqueeze(0),
                keys.transpose(0, 1).unsqueeze(0),
                values.transpose(0, 1).unsqueeze(0),
                attn_mask=mask,
                is_causal=mask is None,
                scale=scale,
                enable_gqa=True,
            )[0].transpose(0, 1)
        return out


def normalize(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim in float32, rounded to x's dtype before the weight (as HF does)."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """NeoX rotary on ``x [T, H, D]`` in float32; a new dense tensor in x's dtype."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)


def gather_context(cache: torch.Tensor, block_tables: torch.Tensor, length: int) -> torch.Tensor:
    """Read the first ``length`` cached tokens of each sequence: ``[B, length, Hk, D]``."""
    block_size = cache.shape[1]
    num_blocks = -(-length // block_size)
    blocks = block_tables[:, :num_blocks].long().clamp(min=0)
    # index_select copies whole blocks (3x faster than advanced indexing on the CPU)
    gathered = cache.index_select(0, blocks.flatten()).view(blocks.shape[0], -1, *cache.shape[2:])
    return gathered[:, :length]  # [B, length, Hk, D]
