"""Turn the last-position logits of each sampled sequence into its next token.

Order of processing (as in vLLM): penalties → min_tokens masking → greedy or (temperature → top_k →
top_p → min_p → draw). Log-probabilities are reported from the raw model distribution. A sequence with a
seed draws from its own generator, so its output does not depend on what else is in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mili.worker.engine.sequence import Sequence, TokenLogprobs
from mili.worker.structured.logits import BatchConstrainer


@dataclass
class SampleResult:
    token_id: int
    logprobs: TokenLogprobs | None


class Sampler:
    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self._seeded: dict[int, torch.Generator] = {}
        self.constrain = BatchConstrainer()

    def forget(self, seq: Sequence) -> None:
        """Drop the per-sequence generator of a finished sequence."""
        self._seeded.pop(seq.seq_id, None)

    def __call__(
        self, logits: torch.Tensor, seqs: list[Sequence], eos_token_ids: frozenset[int]
    ) -> list[SampleResult]:
        logits = logits.float().cpu()
        raw_logprobs = (
            torch.log_softmax(logits, dim=-1) if any(s.params.logprobs is not None for s in seqs) else None
        )
        logits = logits.clone()
        for row, seq in enumerate(seqs):
            apply_penalties(logits[row], seq)
            if seq.num_output_tokens < seq.params.min_tokens:
                banned = list(seq.params.stop_token_ids) + list(eos_token_ids)
                if banned:
                    logits[row, banned] = float("-inf")
        self.constrain(logits, seqs)  # logit_bias, allowed ids, bad words, grammar bitmasks
        token_ids = logits.argmax(dim=-1)
        random_rows = [row for row, seq in enumerate(seqs) if not seq.params.greedy]
        if random_rows:
            probs = self._filtered_probs(logits[random_rows], [seqs[row] for row in random_rows])
            for i, row in enumerate(random_rows):
                token_ids[row] = self._draw(probs[i], seqs[row])
        results = []
        for row, seq in enumerate(seqs):
            token_id = int(token_ids[row])
            logprobs = None
            if raw_logprobs is not None and seq.params.logprobs is not None:
                logprobs = top_logprobs(raw_logprobs[row], token_id, seq.params.logprobs)
            results.append(SampleResult(token_id, logprobs))
        return results

    def _filtered_probs(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        temperatures = torch.tensor([s.params.temperature for s in seqs]).unsqueeze(1)
        logits = logits / temperatures
        top_ks = [s.params.top_k if s.params.top_k > 0 else logits.shape[1] for s in seqs]
        top_ps = [s.params.top_p for s in seqs]
        if min(top_ks) < logits.shape[1] or min(top_ps) < 1.0:
            logits = mask_top_k_top_p(logits, torch.tensor(top_ks), torch.tensor(top_ps))
        probs = torch.softmax(logits, dim=-1)
        min_ps = torch.tensor([s.params.min_p for s in seqs]).unsqueeze(1)
        if bool((min_ps > 0).any()):
            probs = probs.masked_fill(probs < min_ps * probs.max(dim=-1, keepdim=True).values, 0.0)
        return probs

    def _draw(self, probs: torch.Tensor, seq: Sequence) -> int:
        """Exponential-race sampling: argmax(p / E) with E ~ Exp(1) draws from p."""
        generator = self.generator
        if seq.params.seed is not None:
            generator = self._seeded.get(seq.seq_id)
            if generator is None:
                generator = torch.Generator().manual_seed(seq.params.seed + seq.index)
                self._seeded[seq.seq_id] = generator
        noise = torch.empty_like(probs).exponential_(generator=generator)
        return int((probs / noise).argmax())


def apply_penalties(logits: torch.Tensor, seq: Sequence) -> None:
    """Repetition penalty over prompt and output tokens; presence/frequency over output tokens (in place)."""
    params = seq.params
    if params.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(seq.token_ids)), dtype=torch.long)
        values = logits[seen]
        logits[seen] = torch.where(
            values > 0, values / params.repetition_penalty, values * params.repetition_penalty
        )
    if (params.presence_penalty or params.frequency_penalty) and seq.num_output_tokens:
        counts = torch.bincount(torch.tensor(seq.output_token_ids), minlength=logits.shape[0])[
            : logits.shape[0]
        ]
        logits -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0)


def mask_top_k_top_p(logits: torch.Tensor, top_ks: torch.Tensor, top_ps: torch.Tensor) -> torch.Tensor:
    """Set to -inf every logit outside each row's top-k and outside its top-p nucleus."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(logits.shape[1]).unsqueeze(0)
    outside = ranks >= top_ks.unsqueeze(1)
    sorted_logits = sorted_logits.masked_fill(outside, float("-inf"))
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # keep a token while the mass above it is < top_p
    sorted_logits = sorted_logits.masked_fill(mass_before >= top_ps.unsqueeze(1), float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)


def top_logprobs(logprobs: torch.Tensor, token_id: int, k: int) -> TokenLogprobs:
    top = {}
    if k > 0:
        values, ids = logprobs.topk(k)
        top = {int(i): float(v) for i, v in zip(ids, values, strict=True)}
    return TokenLogprobs(token_id=token_id, logprob=float(logprobs[token_id]), top=top)
