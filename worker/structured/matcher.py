"""Per-sequence grammar state and the batch's token bitmask.

A sequence with a grammar owns one ``GrammarState``: it accepts each sampled token, and can be rebuilt
from the sequence's output tokens (what a sequence that lost its matcher, e.g. by preemption with
recompute, needs). ``fill_batch_bitmask`` asks every constrained sequence of a batch for its allowed
tokens in one multi-threaded xgrammar call; ``apply_bitmask`` masks the batch's logits in one tensor op
(xgrammar's kernel on CPU), and free sequences in the same batch are left alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import xgrammar

_BIT_SHIFTS = torch.arange(32, dtype=torch.int32)


class GrammarViolation(RuntimeError):
    """A sampled token the grammar does not allow (only possible if something bypassed the mask)."""


class GrammarState:
    """xgrammar's matcher for one sequence, advanced token by token."""

    def __init__(self, compiled: xgrammar.CompiledGrammar) -> None:
        self.compiled = compiled
        self.matcher = xgrammar.GrammarMatcher(compiled)
        self.num_accepted = 0

    def accept(self, token_id: int) -> None:
        if not self.matcher.accept_token(token_id):
            raise GrammarViolation(f"token {token_id} is not allowed by the grammar here")
        self.num_accepted += 1

    def rebuild(self, output_token_ids: Iterable[int]) -> None:
        """Start over and replay ``output_token_ids`` (the tokens generated so far)."""
        self.matcher = xgrammar.GrammarMatcher(self.compiled)
        self.num_accepted = 0
        for token_id in output_token_ids:
            self.accept(token_id)

    @property
    def is_terminated(self) -> bool:
        """The grammar accepted its stop token: nothing more may follow."""
        return self.matcher.is_terminated()


class BatchBitmask:
    """One reusable bitmask buffer for a vocabulary, filled for the constrained rows of each batch."""

    def __init__(self, vocab_size: int, threads: int = 2) -> None:
        self.vocab_size = vocab_size
        self._buffer = xgrammar.allocate_token_bitmask(1, vocab_size)
        self._batch = xgrammar.BatchGrammarMatcher(max_threads=threads)

    def fill(self, states: Sequence[GrammarState | None]) -> tuple[torch.Tensor, list[int]] | None:
        """The bitmask of ``states`` (one row each) and the rows that are constrained, or None if none."""
        rows = [row for row, state in enumerate(states) if state is not None]
        if not rows:
            return None
        if self._buffer.shape[0] < len(states):
            self._buffer = xgrammar.allocate_token_bitmask(len(states), self.vocab_size)
        bitmask = self._buffer[: len(states)]
        self._batch.batch_fill_next_token_bitmask([states[row].matcher for row in rows], bitmask, rows)
        return bitmask, rows


def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int]) -> None:
    """Set to -inf (in place) every logit of ``rows`` whose bit is 0; other rows are untouched.

    On CPU xgrammar's own kernel does it (about 10x faster than the tensor ops here, which are for
    accelerators: one unpack and one masked fill on the logits' device, no kernel to build)."""
    if logits.device.type == "cpu" and logits.dtype == torch.float32:
        xgrammar.apply_token_bitmask_inplace(logits, bitmask, indices=rows)
        return
    vocab = logits.shape[-1]
    words = bitmask[rows].to(logits.device, non_blocking=True)
    bits = (words.unsqueeze(-1) >> _BIT_SHIFTS.to(logits.device)) & 1
    allowed = bits.reshape(len(rows), -1)[:, :vocab].bool()
    if allowed.shape[1] < vocab:  # ids beyond the bitmask (model padding) are never allowed
        allowed = torch.nn.functional.pad(allowed, (0, vocab - allowed.shape[1]), value=False)
    index = torch.tensor(rows, device=logits.device)
    logits[index] = logits[index].masked_fill(~allowed, float("-inf"))
