"""The per-step logit edits of constrained sequences, for a whole batch: each sequence's fixed
``TokenConstraints`` row by row, then every grammar's bitmask at once."""

from __future__ import annotations

import torch

from mili.worker.engine.sequence import Sequence
from mili.worker.structured.matcher import BatchBitmask, apply_bitmask


def in_step(seq: Sequence) -> None:
    """Rebuild the sequence's matcher from its output tokens if it is not in step with them.

    Preemption by recompute keeps a sequence's output tokens and its matcher (as vLLM does), so they
    stay in step; a matcher that lost its state (a fresh one, or one that missed tokens) is replayed
    here before its next mask, so the mask always follows the tokens generated so far."""
    if seq.grammar is not None and seq.grammar.num_accepted != seq.num_output_tokens:
        seq.grammar.rebuild(seq.output_token_ids)


class BatchConstrainer:
    """The sampler's logits processor for constraints: edits a batch's logits (``[len(seqs), vocab]``)
    in place."""

    def __init__(self) -> None:
        self._bitmask: BatchBitmask | None = None

    def __call__(self, logits: torch.Tensor, seqs: list[Sequence], eos_token_ids: frozenset[int]) -> None:
        for row, seq in enumerate(seqs):
            if seq.token_constraints is not None:
                seq.token_constraints.apply(logits[row], seq.output_token_ids)
        if not any(seq.grammar is not None for seq in seqs):
            return
        for seq in seqs:
            in_step(seq)
        if self._bitmask is None or self._bitmask.vocab_size != logits.shape[-1]:
            self._bitmask = BatchBitmask(logits.shape[-1])
        filled = self._bitmask.fill([seq.grammar for seq in seqs])
        if filled is not None:
            apply_bitmask(logits, *filled)
