"""LLMEngine: client values are checked at admission; a failure while handling one request fails it
alone; each step reports deltas that add up to the whole output."""

from __future__ import annotations

import pytest

from mili.worker import LLM, SamplingParams
from mili.worker.engine.llm_engine import RequestRejected, StepFailed
from mili.worker.engine.outputs import RequestAccumulator
from mili.worker.engine.request import Request

GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(tiny_qwen3_dir) -> LLM:
    return LLM(model=str(tiny_qwen3_dir), kernels="torch", device="cpu", max_model_len=128)


@pytest.mark.parametrize(
    ("prompt", "params", "param"),
    [
        (
            [5, 6],
            SamplingParams(max_tokens=8, min_tokens=4, stop_token_ids=[1_000_000_000]),
            "stop_token_ids",
        ),
        ([5, 10**9], SamplingParams(), "prompt"),
        ([5, -1], SamplingParams(), "prompt"),
    ],
)
def test_token_ids_outside_the_vocabulary_are_refused_at_admission(llm, prompt, params, param):
    with pytest.raises(RequestRejected) as refused:
        llm.engine.add_request("bad", prompt, params)
    assert refused.value.param == param and "request" not in llm.engine.requests


def test_a_tiny_temperature_or_top_p_decodes_greedily(llm):
    greedy = llm.generate([[5, 6, 7]], GREEDY)[0].outputs[0].token_ids
    for params in (dict(temperature=1e-30), dict(top_p=1e-300)):
        tiny = SamplingParams(max_tokens=12, ignore_eos=True, **params)
        assert llm.generate([[5, 6, 7]], tiny)[0].outputs[0].token_ids == greedy


def test_deltas_add_up_to_the_whole_output(llm):
    engine = llm.engine
    params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True, n=2, logprobs=2)
    request = engine.add_request("sum", [5, 6, 7], params)
    total = RequestAccumulator("sum", None, request.prompt_token_ids, 2)
    while engine.has_unfinished_requests():
        for delta in engine.step():
            assert all(len(s.token_ids) == 1 and len(s.logprobs) == 1 for s in delta.sequences)
            total.add(delta)
    output = total.output()
    assert output.finished and [len(c.token_ids) for c in output.outputs] == [20, 20]
    assert output.outputs[0].text == llm.tokenizer.decode(output.outputs[0].token_ids)


def test_a_request_whose_token_handling_raises_fails_alone(llm, monkeypatch):
    engine = llm.engine
    take_token = Request.append_token

    def fail_one(self, seq, *args, **kwargs):
        if self.request_id == "doomed":
            raise RuntimeError("injected")
        return take_token(self, seq, *args, **kwargs)

    monkeypatch.setattr(Request, "append_token", fail_one)
    engine.add_request("doomed", [5, 6, 7], GREEDY)
    engine.add_request("fine", [5, 6, 8], GREEDY)
    deltas = {}
    while engine.has_unfinished_requests():
        for delta in engine.step():
            deltas.setdefault(delta.request_id, []).append(delta)
    assert deltas["doomed"][-1].finished and "injected" in deltas["doomed"][-1].error
    assert deltas["doomed"][-1].sequences[0].finish_reason == "error"
    assert deltas["fine"][-1].error is None and deltas["fine"][-1].sequences[0].finish_reason == "length"
    assert all(count == 0 for count in engine.block_manager.ref_counts)


def test_a_failed_model_run_fails_its_batch_and_the_engine_goes_on(llm, monkeypatch):
    engine = llm.engine

    def broken(*args, **kwargs):
        raise RuntimeError("injected model failure")

    engine.add_request("batch", [5, 6, 7], GREEDY)
    monkeypatch.setattr(engine.runner, "run", broken)
    with pytest.raises(StepFailed) as failed:
        engine.step()
    (delta,) = failed.value.deltas
    assert delta.request_id == "batch" and delta.finished and "injected model failure" in delta.error
    monkeypatch.undo()
    assert not engine.has_unfinished_requests()
    assert llm.generate([[5, 6, 7]], GREEDY)[0].outputs[0].finish_reason == "length"
