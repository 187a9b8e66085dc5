"""A request's fixed logit edits: ``logit_bias``, ``allowed_token_ids`` and ``bad_words``.

Built once at admission (bad words tokenized then) and applied to the request's rows of each step's
logits, after the penalties and before the grammar's bitmask.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mili.worker.sampling_params import SamplingParams
from mili.worker.tokenizer import Tokenizer


@dataclass
class TokenConstraints:
    bias_ids: torch.Tensor | None = None
    bias_values: torch.Tensor | None = None
    allowed_ids: torch.Tensor | None = None
    bad_words: list[list[int]] = field(default_factory=list)

    @classmethod
    def of(cls, params: SamplingParams, tokenizer: Tokenizer) -> TokenConstraints | None:
        """The constraints ``params`` asks for, or None when it asks for none."""
        if not (params.logit_bias or params.allowed_token_ids or params.bad_words):
            return None
        constraints = cls(bad_words=bad_word_token_ids(params.bad_words, tokenizer))
        if params.logit_bias:
            constraints.bias_ids = torch.tensor(list(params.logit_bias), dtype=torch.long)
            constraints.bias_values = torch.tensor(list(params.logit_bias.values()), dtype=torch.float32)
        if params.allowed_token_ids:
            constraints.allowed_ids = torch.tensor(sorted(set(params.allowed_token_ids)), dtype=torch.long)
        return constraints

    def apply(self, logits: torch.Tensor, output_token_ids: list[int]) -> None:
        """Edit one row of logits in place, given the tokens generated so far."""
        if self.allowed_ids is not None:
            ids = self.allowed_ids.to(logits.device)
            kept = logits[ids]
            logits.fill_(float("-inf"))
            logits[ids] = kept
        if self.bias_ids is not None:
            logits[self.bias_ids.to(logits.device)] += self.bias_values.to(logits.device)
        banned = [word[-1] for word in self.bad_words if _ends_with(output_token_ids, word[:-1])]
        if banned:
            logits[banned] = float("-inf")


def _ends_with(token_ids: list[int], prefix: list[int]) -> bool:
    return not prefix or token_ids[-len(prefix) :] == prefix


def bad_word_token_ids(words: list[str], tokenizer: Tokenizer) -> list[list[int]]:
    """Each bad word as tokens, spelled alone and after a space (as vLLM does): a word's last token is
    banned whenever the output ends with the word's other tokens."""
    sequences: list[list[int]] = []
    for word in words:
        for spelling in (word, " " + word.lstrip()):
            ids = tokenizer.encode(spelling, add_special_tokens=False)
            if ids and ids not in sequences:
                sequences.append(ids)
    return sequences
