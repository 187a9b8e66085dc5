"""Architecture facts read from a checkpoint's config.json (transformers 4 and 5 spellings)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

SUPPORTED_ARCHITECTURES = ("Qwen3ForCausalLM", "Qwen2ForCausalLM", "LlamaForCausalLM", "MistralForCausalLM")


@dataclass(frozen=True)
class ModelConfig:
    """What the decoder needs to build itself; one decoder serves Qwen3, Qwen2 and Llama via flags."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool  # Qwen2 (and Llama with attention_bias)
    qk_norm: bool  # Qwen3: RMSNorm per head on q and k before RoPE
    torch_dtype: torch.dtype
    eos_token_ids: tuple[int, ...]

    @classmethod
    def from_dir(cls, model_dir: Path) -> ModelConfig:
        path = Path(model_dir) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{model_dir} has no config.json: not a Hugging Face model directory")
        return cls.from_dict(json.loads(path.read_text()))

    @classmethod
    def from_dict(cls, raw: dict) -> ModelConfig:
        architecture = (raw.get("architectures") or ["?"])[0]
        if architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"architecture {architecture!r} is not supported; "
                f"MILI serves {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        num_heads = raw["num_attention_heads"]
        head_dim = raw.get("head_dim")
        if head_dim is None:
            if architecture == "Qwen3ForCausalLM":
                raise ValueError("Qwen3 config.json must give head_dim (it is not hidden_size / heads)")
            head_dim = raw["hidden_size"] // num_heads
        rope = raw.get("rope_parameters") or {}
        rope_theta = raw.get("rope_theta", rope.get("rope_theta", 10000.0))
        rope_scaling = raw.get("rope_scaling") or (
            {k: v for k, v in rope.items() if k != "rope_theta"} or None
        )
        if rope_scaling is not None and rope_scaling.get("rope_type", rope_scaling.get("type")) == "default":
            rope_scaling = None
        eos = raw.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
        dtype_name = raw.get("dtype") or raw.get("torch_dtype") or "float32"
        return cls(
            architecture=architecture,
            vocab_size=raw["vocab_size"],
            hidden_size=raw["hidden_size"],
            intermediate_size=raw["intermediate_size"],
            num_layers=raw["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=raw.get("num_key_value_heads") or num_heads,
            head_dim=head_dim,
            rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope_theta),
            rope_scaling=rope_scaling,
            max_position_embeddings=raw.get("max_position_embeddings", 4096),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            qkv_bias=architecture == "Qwen2ForCausalLM" or bool(raw.get("attention_bias", False)),
            qk_norm=architecture == "Qwen3ForCausalLM",
            torch_dtype=getattr(torch, dtype_name) if isinstance(dtype_name, str) else torch.float32,
            eos_token_ids=eos_ids,
        )

    def rope_inv_freq(self) -> torch.Tensor:
        """Inverse frequencies for RoPE, with the checkpoint's scaling (default, linear or llama3)."""
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.int64).float() / self.head_dim
        inv_freq = 1.0 / (self.rope_theta**exponents)
        if self.rope_scaling is None:
            return inv_freq
        kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type"))
        factor = float(self.rope_scaling.get("factor", 1.0))
        if kind == "linear":
            return inv_freq / factor
        if kind == "llama3":
            return _llama3_scaled(inv_freq, self.rope_scaling, factor)
        raise ValueError(f"rope scaling {kind!r} is not supported (default, linear, llama3 are)")


def _llama3_scaled(inv_freq: torch.Tensor, scaling: dict, factor: float) -> torch.Tensor:
    low_freq_factor = float(scaling.get("low_freq_factor", 1.0))
    high_freq_factor = float(scaling.get("high_freq_factor", 4.0))
    original_len = float(scaling.get("original_max_position_embeddings", 8192))
    low_freq_wavelen = original_len / low_freq_factor
    high_freq_wavelen = original_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (original_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)
