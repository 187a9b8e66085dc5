"""Grammars in the engine: constrained and free sequences share batches, compiling never blocks a step,
preemption by recompute, abort and finish release the matcher; on the tiny Qwen3 and the default model."""

from __future__ import annotations

import json
from concurrent.futures import Future

import jsonschema
import pytest

from mili.worker import LLM, SamplingParams
from mili.worker.structured.matcher import GrammarState
from mili.worker.structured.spec import StructuredOutputsParams

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "scores": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "maxItems": 4},
        "kind": {"enum": ["a", "b"]},
    },
    "required": ["name", "scores", "kind"],
}


def constrained(schema=SCHEMA, **params) -> SamplingParams:
    return SamplingParams(
        temperature=1.0, max_tokens=120, structured_outputs=StructuredOutputsParams(json=schema), **params
    )


@pytest.fixture(scope="module")
def tiny(tiny_qwen3_dir) -> LLM:
    return LLM(model=str(tiny_qwen3_dir), max_model_len=512, device="cpu")


def drain(engine) -> dict:
    deltas = {}
    while engine.has_unfinished_requests():
        for delta in engine.step():
            deltas.setdefault(delta.request_id, []).append(delta)
    return deltas


def test_n_seeds_and_free_neighbours(tiny):
    free = SamplingParams(temperature=0.0, max_tokens=16)
    outputs = tiny.generate(["a", "b", "c"], [constrained(n=3, seed=1), free, constrained(seed=2)])
    for output in (outputs[0], outputs[2]):
        for sample in output.outputs:
            assert sample.finish_reason == "stop"
            jsonschema.validate(json.loads(sample.text), SCHEMA)
    assert outputs[1].outputs[0].text == tiny.generate(["b"], free)[0].outputs[0].text
    again = tiny.generate(["a"], constrained(n=3, seed=1))[0]
    assert [s.text for s in again.outputs] == [s.text for s in outputs[0].outputs]  # seeds still decide


def test_stop_strings_still_cut_the_output(tiny):
    output = tiny.generate(["a"], constrained(seed=3, stop=['"scores"']))[0].outputs[0]
    assert output.text.startswith('{"name": ') and output.finish_reason == "stop"
    assert "scores" not in output.text


def test_preemption_by_recompute_keeps_outputs_valid(tiny_qwen3_dir):
    llm = LLM(model=str(tiny_qwen3_dir), max_model_len=192, device="cpu", num_kv_blocks=12, block_size=16)
    prompts = [[10 + i] * 40 for i in range(6)]
    outputs = llm.generate(prompts, [constrained(seed=i) for i in range(6)])
    assert llm.engine.scheduler.num_preemptions > 0
    for output in outputs:
        jsonschema.validate(json.loads(output.outputs[0].text), SCHEMA)


def test_a_matcher_out_of_step_is_rebuilt_from_the_generated_tokens(tiny):
    """A matcher that lost its state (as a recompute that dropped it would) is replayed before the
    next mask, so the output still follows the grammar."""
    engine = tiny.engine
    request = engine.add_request("reset", "hi", constrained(seed=5))
    (seq,) = request.seqs
    while seq.num_output_tokens < 4:
        engine.step()
    compiled = seq.grammar.compiled
    seq.grammar = GrammarState(compiled)  # fresh: has accepted nothing
    engine.step()
    assert seq.grammar.num_accepted == seq.num_output_tokens
    text = "".join(s.text for d in drain(engine).get("reset", []) for s in d.sequences)
    tokens_text = tiny.tokenizer.decode(seq.output_token_ids)
    jsonschema.validate(json.loads(tokens_text), SCHEMA)
    assert text and tokens_text.endswith(text)


def test_a_request_waits_for_its_grammar_without_blocking_the_step(tiny, monkeypatch):
    engine = tiny.engine
    pending: Future = Future()
    compiler = engine.structured.compiler
    monkeypatch.setattr(compiler, "submit", lambda spec: pending)
    engine.add_request("waiting", "hi", constrained(seed=1))
    engine.add_request("free", "hi", SamplingParams(temperature=0.0, max_tokens=4))
    for _ in range(4):
        engine.step()
    assert "free" not in engine.requests and engine.structured.num_waiting == 1  # the free one finished
    monkeypatch.undo()
    pending.set_result(compiler.compile(StructuredOutputsParams(json=SCHEMA).spec()))
    deltas = drain(engine)["waiting"]
    text = "".join(sequence.text for delta in deltas for sequence in delta.sequences)
    jsonschema.validate(json.loads(text), SCHEMA)


def test_a_grammar_that_fails_in_the_engine_fails_its_request_alone(tiny):
    engine = tiny.engine
    engine.add_request("bad", "hi", SamplingParams(structured_outputs=StructuredOutputsParams(regex="(")))
    engine.add_request("good", "hi", SamplingParams(temperature=0.0, max_tokens=4))
    deltas = drain(engine)
    assert "parenthesis" in deltas["bad"][-1].error
    assert deltas["good"][-1].finished and deltas["good"][-1].error is None


def test_abort_and_finish_release_the_matcher(tiny):
    engine = tiny.engine
    request = engine.add_request("aborted", "hi", constrained(seed=1))
    engine.step()
    (seq,) = request.seqs
    assert seq.grammar is not None
    engine.abort_request("aborted")
    assert seq.grammar is None
    finished = engine.add_request("finished", "hi", constrained(seed=1))
    drain(engine)
    assert finished.seqs[0].grammar is None


@pytest.mark.parametrize(
    "schema",
    [
        SCHEMA,
        {
            "type": "object",
            "properties": {
                "answer": {"enum": ["yes", "no"]},
                "confidence": {"type": "integer", "minimum": 0, "maximum": 100},
            },
            "required": ["answer", "confidence"],
        },
    ],
)
def test_the_default_model_follows_schemas(smollm2_dir, schema):
    llm = _smollm2(smollm2_dir)
    prompt = llm.tokenizer.apply_chat_template([{"role": "user", "content": "Reply in JSON."}])
    output = llm.generate(prompt, constrained(schema, seed=0))[0].outputs[0]
    jsonschema.validate(json.loads(output.text), schema)


_LOADED: dict = {}


def _smollm2(directory) -> LLM:
    if "llm" not in _LOADED:
        _LOADED["llm"] = LLM(model=str(directory), max_model_len=512, device="cpu")
    return _LOADED["llm"]
