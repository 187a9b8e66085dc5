"""Prompt logprobs: the log-probability of each prompt token given the tokens before it.

Gathered during prefill, only for sequences that ask (``SamplingParams.prompt_logprobs``): the hidden
state at position ``p`` of a prefill chunk predicts token ``p + 1``, so each chunk yields the logprobs
of the prompt tokens after its positions, and chunked prefills add them up chunk by chunk. Every other
sequence keeps computing logits at its last position only.

Tokens taken from the prefix cache were never run through the model and have no logits, so a
sequence that wants prompt logprobs computes its whole prompt (it takes no prefix-cache hits, as in
vLLM); once they are delivered it is an ordinary sequence again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from mili.worker.engine.scheduler import ScheduledBatch
from mili.worker.engine.sequence import TokenLogprobs

ROWS_PER_PASS = 256  # logits rows computed at once: bounds the [rows, vocab] float32 scratch


@dataclass
class PromptLogprobs:
    """One sequence's prompt logprobs so far; entry 0 is None (the first token has no prefix).
    Each entry holds the prompt token's logprob and rank in the vocabulary (1 = most likely), and
    the ``num_top`` most likely tokens at that position."""

    num_top: int
    num_prompt_tokens: int
    entries: list[TokenLogprobs | None] = field(default_factory=lambda: [None])

    @property
    def complete(self) -> bool:
        return len(self.entries) >= self.num_prompt_tokens

    def positions(self, start: int, num_tokens: int) -> range:
        """The positions of a chunk ``[start, start + num_tokens)`` whose logits give entries not yet
        gathered (position ``p`` gives entry ``p + 1``); empty once complete."""
        first = max(start, len(self.entries) - 1)
        return range(first, min(start + num_tokens, self.num_prompt_tokens - 1))


@dataclass
class _Wanted:
    collector: PromptLogprobs
    rows: range  # rows of the step's hidden states
    targets: list[int]  # the prompt token each row predicts


def _wanted(batch: ScheduledBatch) -> list[_Wanted]:
    """The prefill chunks of this batch that gather prompt logprobs, with their hidden-state rows
    (the runner lays out decodes first, then the prefill chunks in order)."""
    wanted, offset = [], len(batch.decodes)
    for entry in batch.prefills:
        collector = entry.seq.prompt_logprobs
        if collector is not None and not collector.complete:
            start = entry.seq.num_computed_tokens
            positions = collector.positions(start, entry.num_tokens)
            if positions:
                rows = range(offset + positions.start - start, offset + positions.stop - start)
                targets = entry.seq.token_ids[positions.start + 1 : positions.stop + 1]
                wanted.append(_Wanted(collector, rows, targets))
        offset += entry.num_tokens
    return wanted


@torch.inference_mode()
def gather_prompt_logprobs(
    batch: ScheduledBatch, hidden: torch.Tensor, compute_logits: Callable[[torch.Tensor], torch.Tensor]
) -> None:
    """Add this step's prompt logprobs to the collectors of the batch's prefill chunks that want them."""
    wanted = _wanted(batch)
    if not wanted:
        return
    rows = torch.tensor([r for w in wanted for r in w.rows], dtype=torch.long, device=hidden.device)
    targets = torch.tensor([t for w in wanted for t in w.targets], dtype=torch.long, device=hidden.device)
    num_top = max(1, max(w.collector.num_top for w in wanted))
    chosen, ranks, top_values, top_ids = [], [], [], []
    for first in range(0, len(rows), ROWS_PER_PASS):
        part = slice(first, first + ROWS_PER_PASS)
        logprobs = torch.log_softmax(compute_logits(hidden[rows[part]]).float(), dim=-1)
        target_logprobs = logprobs.gather(1, targets[part].unsqueeze(1))
        chosen.append(target_logprobs.squeeze(1))
        ranks.append((logprobs > target_logprobs).sum(dim=1) + 1)
        values, ids = logprobs.topk(num_top, dim=-1)
        top_values.append(values)
        top_ids.append(ids)
    chosen_list = torch.cat(chosen).tolist()
    ranks_list = torch.cat(ranks).tolist()
    values_list = torch.cat(top_values).tolist()
    ids_list = torch.cat(top_ids).tolist()
    row = 0
    for w in wanted:
        k = w.collector.num_top
        for target in w.targets:
            top = dict(zip(ids_list[row][:k], values_list[row][:k], strict=True))
            w.collector.entries.append(TokenLogprobs(target, chosen_list[row], top, ranks_list[row]))
            row += 1
