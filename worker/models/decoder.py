"""Decoder-only transformer for Qwen3, Qwen2 and Llama checkpoints (one module, flags from the config).

Every op on the hot path goes through the kernel backend; KV is read and written through the paged cache
described by the per-step `AttentionContext`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from mili.kernels import KernelBackend
from mili.worker.engine.context import get_context
from mili.worker.models.model_config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, backend: KernelBackend) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps
        self.backend = backend

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``norm(x)``; with ``residual``: ``residual += x`` in place, then ``norm(residual)`` (one pass)."""
        if residual is None:
            return self.backend.rms_norm(x, self.weight, self.eps)[0]
        return self.backend.fused_add_rms_norm(x, residual, self.weight, self.eps)


class PackedLinear(nn.Linear):
    """A linear layer whose weight packs several checkpoint tensors along the output dim
    (q/k/v into qkv, gate/up into gate_up); `shard_sizes` names each shard's rows."""

    def __init__(self, in_features: int, shard_sizes: dict[str, int], bias: bool) -> None:
        super().__init__(in_features, sum(shard_sizes.values()), bias=bias)
        self.shard_offsets: dict[str, tuple[int, int]] = {}
        offset = 0
        for name, size in shard_sizes.items():
            self.shard_offsets[name] = (offset, size)
            offset += size

    def load_shard(self, param: nn.Parameter, loaded: torch.Tensor, shard: str) -> None:
        offset, size = self.shard_offsets[shard]
        if loaded.shape[0] != size:
            raise ValueError(f"shard {shard!r} has {loaded.shape[0]} rows, expected {size}")
        param.data[offset : offset + size].copy_(loaded)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, backend: KernelBackend) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        self.scale = self.head_dim**-0.5
        q_size = self.num_heads * self.head_dim
        kv_size = self.num_kv_heads * self.head_dim
        self.qkv_proj = PackedLinear(
            config.hidden_size, {"q": q_size, "k": kv_size, "v": kv_size}, config.qkv_bias
        )
        self.o_proj = nn.Linear(q_size, config.hidden_size, bias=False)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps, backend) if config.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps, backend) if config.qk_norm else None
        self.qk_norm_eps = config.rms_norm_eps
        self.backend = backend
        self.k_cache = torch.empty(0)
        self.v_cache = torch.empty(0)

    def forward(
        self, positions: torch.Tensor, hidden: torch.Tensor, cos_sin_cache: torch.Tensor
    ) -> torch.Tensor:
        num_tokens = hidden.shape[0]
        qkv = self.qkv_proj(hidden)
        q, k, v = qkv.split(
            [
                self.num_heads * self.head_dim,
                self.num_kv_heads * self.head_dim,
                self.num_kv_heads * self.head_dim,
            ],
            dim=-1,
        )
        q = q.view(num_tokens, self.num_heads, self.head_dim)
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)
        # One op reads the strided q/k views of qkv and writes them dense, normed (Qwen3) and rotated.
        q, k = self.backend.qk_norm_rotary(
            positions,
            q,
            k,
            self.q_norm.weight if self.q_norm is not None else None,
            self.k_norm.weight if self.k_norm is not None else None,
            self.qk_norm_eps,
            cos_sin_cache,
        )
        out = self.attend(q, k, v)  # store_kv takes v's strided view as it is
        return self.o_proj(out.reshape(num_tokens, -1))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        ctx = get_context()
        self.backend.store_kv(k, v, self.k_cache, self.v_cache, ctx.slot_mapping)
        parts = []
        num_decode = ctx.num_decode_tokens
        if num_decode:
            parts.append(
                self.backend.decode_attention(
                    q[:num_decode],
                    self.k_cache,
                    self.v_cache,
                    ctx.decode_block_tables,
                    ctx.decode_context_lens,
                    self.scale,
                )
            )
        if num_decode < q.shape[0]:
            parts.append(
                self.backend.prefill_attention(
                    q[num_decode:],
                    self.k_cache,
                    self.v_cache,
                    ctx.prefill_cu_seqlens_q,
                    ctx.prefill_context_lens,
                    ctx.prefill_block_tables,
                    self.scale,
                )
            )
        return parts[0] if len(parts) == 1 else torch.cat(parts)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig, backend: KernelBackend) -> None:
        super().__init__()
        size = config.intermediate_size
        self.gate_up_proj = PackedLinear(config.hidden_size, {"gate": size, "up": size}, bias=False)
        self.down_proj = nn.Linear(size, config.hidden_size, bias=False)
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.backend.silu_and_mul(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, backend: KernelBackend) -> None:
        super().__init__()
        self.self_attn = Attention(config, backend)
        self.mlp = MLP(config, backend)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, backend)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, backend)

    def forward(
        self,
        positions: torch.Tensor,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        cos_sin: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual = hidden  # the embedding output: from here on updated in place
            hidden = self.input_layernorm(hidden)
        else:
            hidden = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden, cos_sin)
        hidden = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class DecoderModel(nn.Module):
    def __init__(self, config: ModelConfig, backend: KernelBackend) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, backend) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, backend)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)
        residual = None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual, cos_sin)
        return self.norm(hidden, residual)


class CausalLM(nn.Module):
    """`forward(input_ids, positions)` → final hidden states; `compute_logits(hidden)` → vocab logits."""

    # checkpoint name fragment → (our parameter fragment, shard name)
    packed_modules: ClassVar[dict[str, tuple[str, str]]] = {
        "q_proj": ("qkv_proj", "q"),
        "k_proj": ("qkv_proj", "k"),
        "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", "gate"),
        "up_proj": ("gate_up_proj", "up"),
    }

    def __init__(self, config: ModelConfig, backend: KernelBackend) -> None:
        super().__init__()
        self.config = config
        self.model = DecoderModel(config, backend)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        max_positions = config.max_position_embeddings
        freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), config.rope_inv_freq())
        # float32 whatever the model dtype: a plain attribute so that `.to(dtype)` leaves it alone.
        self.cos_sin_cache = torch.cat((freqs.cos(), freqs.sin()), dim=-1)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, positions, self.cos_sin_cache)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)
