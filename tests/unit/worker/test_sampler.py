"""The batched sampler on its own: batch invariance of seeds, penalties, device-kept counts, and what
crosses to the host."""

from __future__ import annotations

import pytest
import torch

from mili.worker.engine.sampler import Sampler
from mili.worker.engine.sequence import Sequence
from mili.worker.sampling_params import SamplingParams

VOCAB = 300
NO_EOS: frozenset[int] = frozenset()


def sequence(prompt_len: int = 5, **params) -> Sequence:
    return Sequence("r", 0, list(range(prompt_len)), SamplingParams(**params))


def steps(sampler: Sampler, seqs: list[Sequence], logits: list[torch.Tensor]) -> list[list[int]]:
    """Sample ``len(logits)`` steps, appending each chosen token as the engine does."""
    for step_logits in logits:
        for seq, result in zip(seqs, sampler(step_logits, seqs, NO_EOS), strict=True):
            seq.token_ids.append(result.token_id)
    return [seq.output_token_ids for seq in seqs]


def random_logits(num_steps: int, rows: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, VOCAB, generator=generator) * 3 for _ in range(num_steps)]


def test_a_seeded_sequence_draws_the_same_alone_and_in_any_batch() -> None:
    mine = dict(temperature=1.0, top_p=0.9, seed=42)
    logits = random_logits(8, 1)
    alone = steps(Sampler(0, VOCAB), [sequence(**mine)], logits)[0]
    crowd = [
        sequence(temperature=0.7),
        sequence(**mine),
        sequence(temperature=1.3, seed=7),
        sequence(temperature=0),
    ]
    padded = [torch.cat([torch.randn(1, VOCAB), row, torch.randn(2, VOCAB)]) for row in logits]
    assert steps(Sampler(123, VOCAB), crowd, padded)[1] == alone
    other_seed = steps(Sampler(0, VOCAB), [sequence(temperature=1.0, top_p=0.9, seed=43)], logits)[0]
    assert other_seed != alone


def reference_penalties(logits: torch.Tensor, seq: Sequence) -> torch.Tensor:
    """vLLM's penalty semantics, one row at a time."""
    p, out = seq.params, logits.clone()
    for token in set(seq.token_ids):
        out[token] = (
            out[token] / p.repetition_penalty if out[token] > 0 else out[token] * p.repetition_penalty
        )
    counts = torch.bincount(torch.tensor(seq.output_token_ids, dtype=torch.long), minlength=VOCAB).float()
    return out - p.frequency_penalty * counts - p.presence_penalty * (counts > 0).float()


def test_batched_penalties_match_the_per_row_definition() -> None:
    seqs = [
        sequence(temperature=0, repetition_penalty=1.7),
        sequence(temperature=0),
        sequence(temperature=0, presence_penalty=1.5, frequency_penalty=0.5),
        sequence(temperature=0, repetition_penalty=0.8, frequency_penalty=-1.0),
    ]
    sampler = Sampler(0, VOCAB)
    steps(sampler, seqs, random_logits(6, len(seqs), seed=1))
    logits = random_logits(1, len(seqs), seed=2)[0]
    expected = torch.stack([reference_penalties(logits[i], s) for i, s in enumerate(seqs)]).argmax(dim=-1)
    assert [r.token_id for r in sampler(logits, seqs, NO_EOS)] == expected.tolist()


def test_output_token_counts_stay_on_the_device_in_step_with_the_sequence() -> None:
    seq = sequence(temperature=1.0, seed=3, frequency_penalty=0.3)
    sampler = Sampler(0, VOCAB)
    (outputs,) = steps(sampler, [seq], random_logits(10, 1))
    row = sampler.token_counts.rows([seq])
    expected = torch.bincount(torch.tensor(outputs), minlength=VOCAB)
    assert torch.equal(sampler.token_counts.counts[row[0]].long(), expected)
    seq.token_ids.append(7)  # a token the sampler did not choose: the row is rebuilt, not trusted
    row = sampler.token_counts.rows([seq])
    assert int(sampler.token_counts.counts[row[0], 7]) == expected[7] + 1
    sampler.forget(seq)
    assert sampler.token_counts.rows([sequence(frequency_penalty=1.0)]).tolist() == row.tolist()  # reused


def test_only_chosen_tokens_and_requested_logprobs_cross_to_the_host(monkeypatch) -> None:
    sampler = Sampler(0, VOCAB)
    transfers: list[list[tuple[int, ...]]] = []
    to_host = sampler._to_host

    def recording(*tensors):
        transfers.append([tuple(t.shape) for t in tensors])
        return to_host(*tensors)

    monkeypatch.setattr(sampler, "_to_host", recording)
    seqs = [sequence(temperature=0, logprobs=2), sequence(temperature=1.0), sequence(temperature=0)]
    results = sampler(random_logits(1, 3)[0], seqs, NO_EOS)
    assert transfers == [[(3,), (3,), (3, 2), (3, 2)]]  # one sync: ids, chosen logprob, top-2
    assert results[0].logprobs is not None and len(results[0].logprobs.top) == 2
    assert results[1].logprobs is None


def test_a_logits_processor_stage_sees_every_row_before_sampling() -> None:
    sampler = Sampler(0, VOCAB)

    def ban_the_favourites(logits: torch.Tensor, seqs, eos_token_ids) -> None:
        logits[:, :150] = float("-inf")

    sampler.processors.append(ban_the_favourites)
    seqs = [sequence(temperature=0), sequence(temperature=1.0, seed=1)]
    for logits in random_logits(5, 2):
        assert all(r.token_id >= 150 for r in sampler(logits, seqs, NO_EOS))


@pytest.mark.parametrize("params", [dict(top_k=3), dict(top_p=0.3), dict(min_p=0.5)])
def test_filters_keep_draws_inside_the_allowed_set(params) -> None:
    logits = random_logits(1, 1)[0]
    seqs = [sequence(temperature=1.5, seed=s, **params) for s in range(40)]
    drawn = {r.token_id for r in Sampler(0, VOCAB)(logits.expand(40, -1), seqs, NO_EOS)}
    probs = logits[0].softmax(-1)
    if "top_k" in params:
        allowed = set(logits[0].topk(3).indices.tolist())
    elif "top_p" in params:
        order = probs.argsort(descending=True)
        before = probs[order].cumsum(0) - probs[order]
        allowed = set(order[before < 0.3].tolist())
    else:
        allowed = set((probs >= 0.5 * probs.max()).nonzero().flatten().tolist())
    assert drawn <= allowed and len(drawn) >= min(2, len(allowed))
