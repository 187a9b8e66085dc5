"""Per-sequence grammar state, the batch bitmask, token constraints and the schema fix."""

from __future__ import annotations

import json

import pytest
import torch
import xgrammar

from mili.worker.sampling_params import SamplingParams
from mili.worker.structured.compiler import GrammarCompilerService
from mili.worker.structured.matcher import BatchBitmask, GrammarState, GrammarViolation, apply_bitmask
from mili.worker.structured.schema_fixes import without_control_characters
from mili.worker.structured.spec import GrammarSpec
from mili.worker.structured.token_constraints import TokenConstraints
from mili.worker.structured.vocabulary import tokenizer_info
from mili.worker.tokenizer import Tokenizer
from mili_testing.tiny_models import save_tokenizer

PADDED = 8  # extra logit columns, as a model with a padded embedding has


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    directory = tmp_path_factory.mktemp("tok")
    save_tokenizer(directory)
    return Tokenizer.from_pretrained(directory)


@pytest.fixture(scope="module")
def compiler(tokenizer) -> GrammarCompilerService:
    return GrammarCompilerService(
        tokenizer_info(tokenizer, tokenizer.vocab_size + PADDED, tokenizer.eos_token_ids)
    )


def generate(state: GrammarState, tokenizer: Tokenizer, steps: int, seed: int) -> list[int]:
    """Random logits through the bitmask, one row free and one constrained, until the grammar ends."""
    vocab = tokenizer.vocab_size + PADDED
    bitmask = BatchBitmask(vocab)
    generator = torch.Generator().manual_seed(seed)
    tokens = []
    for _ in range(steps):
        logits = torch.randn(2, vocab, generator=generator)
        free_row = logits[0].clone()
        apply_bitmask(logits, *bitmask.fill([None, state]))
        assert torch.equal(logits[0], free_row)  # the free sequence is untouched
        assert torch.isinf(logits[1, -PADDED:]).all()  # padding ids never allowed
        token = int(logits[1].argmax())
        state.accept(token)
        if token in tokenizer.eos_token_ids:
            return tokens
        tokens.append(token)
    raise AssertionError("the grammar did not finish")


def test_masked_sampling_follows_the_schema(tokenizer, compiler):
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["n"],
    }
    for seed in range(5):
        state = GrammarState(compiler.compile(GrammarSpec.json_schema(schema, "x")))
        assert json.loads(tokenizer.decode(generate(state, tokenizer, 100, seed)))["n"] in range(10)
        assert state.is_terminated


def test_rebuild_replays_the_generated_tokens(tokenizer, compiler):
    compiled = compiler.compile(GrammarSpec("regex", "[a-z]{3}-[0-9]{3}", "x"))
    state = GrammarState(compiled)
    tokens = tokenizer.encode("abc-1", add_special_tokens=False)
    for token in tokens:
        state.accept(token)
    rebuilt = GrammarState(compiled)
    rebuilt.rebuild(tokens)
    first, second = xgrammar.allocate_token_bitmask(1, compiled.tokenizer_info.vocab_size), None
    second = first.clone()
    state.matcher.fill_next_token_bitmask(first)
    rebuilt.matcher.fill_next_token_bitmask(second)
    assert torch.equal(first, second) and rebuilt.num_accepted == len(tokens)


def test_a_token_outside_the_grammar_is_a_violation(tokenizer, compiler):
    state = GrammarState(compiler.compile(GrammarSpec("regex", "[0-9]+", "x")))
    with pytest.raises(GrammarViolation):
        state.accept(tokenizer.encode("x", add_special_tokens=False)[0])


def test_token_constraints(tokenizer):
    fox = tokenizer.encode(" fox", add_special_tokens=False)
    params = SamplingParams(logit_bias={3: 5.0}, allowed_token_ids=[3, 4, 5, fox[-1]], bad_words=["fox"])
    constraints = TokenConstraints.of(params, tokenizer)
    logits = torch.zeros(tokenizer.vocab_size)
    constraints.apply(logits, output_token_ids=fox[:-1])
    finite = torch.isfinite(logits).nonzero().flatten().tolist()
    assert finite == [3, 4, 5] and logits[3] == 5.0  # fox's last token is banned after its prefix
    assert TokenConstraints.of(SamplingParams(), tokenizer) is None


def test_length_bounded_strings_become_patterns_without_control_characters(compiler):
    schema = {
        "type": "object",
        "properties": {
            "s": {"type": "string", "maxLength": 4},
            "t": {"type": "string", "pattern": "^a$", "maxLength": 2},
        },
    }
    fixed = without_control_characters(schema)
    assert "maxLength" not in fixed["properties"]["s"] and fixed["properties"]["s"]["pattern"].endswith(
        "{0,4}$"
    )
    assert fixed["properties"]["t"] == schema["properties"]["t"]
    state = GrammarState(compiler.compile(GrammarSpec.json_schema(schema, "x")))
    assert state.matcher.accept_string('{"s": "ab')
    assert not state.matcher.accept_string("\t")


def test_the_cpu_kernel_and_the_tensor_ops_mask_alike(tokenizer, compiler):
    vocab = tokenizer.vocab_size + PADDED
    state = GrammarState(compiler.compile(GrammarSpec("regex", "[a-z]{2}[0-9]", "x")))
    bitmask, rows = BatchBitmask(vocab).fill([None, state, None])
    logits = torch.randn(3, vocab, generator=torch.Generator().manual_seed(0))
    by_kernel, by_tensors = logits.clone(), logits.double()  # float64 takes the tensor path
    apply_bitmask(by_kernel, bitmask, rows)
    apply_bitmask(by_tensors, bitmask, rows)
    assert torch.equal(torch.isinf(by_kernel), torch.isinf(by_tensors))
    assert torch.isinf(by_kernel[1]).sum() > 0 and torch.isfinite(by_kernel[[0, 2]]).all()
