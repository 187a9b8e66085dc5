"""Per-step attention metadata, set once by the model runner and read by every attention layer."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionContext:
    """Layout of one step's flat token batch: ``num_decode_tokens`` decode tokens (one per sequence)
    first, then the prefill chunks. See `mili.kernels.backend` for the tensor conventions."""

    slot_mapping: torch.Tensor  # [T] int64
    num_decode_tokens: int
    decode_block_tables: torch.Tensor | None = None  # [num_decodes, max_blocks] int32
    decode_context_lens: torch.Tensor | None = None  # [num_decodes] int32
    prefill_cu_seqlens_q: torch.Tensor | None = None  # [num_prefills + 1] int32
    prefill_context_lens: torch.Tensor | None = None  # [num_prefills] int32
    prefill_block_tables: torch.Tensor | None = None  # [num_prefills, max_blocks] int32


_current: AttentionContext | None = None


def set_context(context: AttentionContext | None) -> None:
    global _current
    _current = context


def get_context() -> AttentionContext:
    if _current is None:
        raise RuntimeError("attention context is not set: the model runs only inside ModelRunner.run")
    return _current
