"""Each sampling parameter has the effect it promises, through the real engine on a tiny model."""

from __future__ import annotations

import pytest

from mili.worker import LLM, SamplingParams

PROMPT = [11, 42, 97, 5, 230, 18, 77]
OTHER_PROMPTS = [[3, 4, 5, 6], [100, 101], [9] * 20]


@pytest.fixture(scope="module")
def llm(tiny_qwen3_dir) -> LLM:
    return LLM(model=str(tiny_qwen3_dir), kernels="torch")


def run(llm: LLM, **params) -> list[int]:
    params.setdefault("max_tokens", 24)
    params.setdefault("ignore_eos", True)
    return llm.generate([PROMPT], SamplingParams(**params))[0].outputs[0].token_ids


def distinct(tokens: list[int]) -> int:
    return len(set(tokens))


def test_top_k_one_min_p_one_and_tiny_top_p_all_equal_greedy(llm):
    greedy = run(llm, temperature=0.0)
    assert run(llm, temperature=1.5, top_k=1, seed=1) == greedy
    assert run(llm, temperature=1.5, min_p=1.0, seed=2) == greedy
    assert run(llm, temperature=1.5, top_p=1e-6, seed=3) == greedy


def test_same_seed_same_output_whatever_else_is_in_the_batch(llm):
    params = SamplingParams(temperature=1.0, seed=1234, max_tokens=24, ignore_eos=True)
    alone = llm.generate([PROMPT], params)[0].outputs[0].token_ids
    batch_params = [params, SamplingParams(temperature=1.0, max_tokens=30, ignore_eos=True)] + [
        SamplingParams(temperature=0.8, seed=i, max_tokens=10, ignore_eos=True) for i in range(2)
    ]
    crowded = llm.generate([PROMPT, *OTHER_PROMPTS], batch_params)[0].outputs[0].token_ids
    assert crowded == alone
    assert run(llm, temperature=1.0, seed=1235) != alone


def test_higher_temperature_spreads_the_distribution(llm):
    cold = [t for seed in range(6) for t in run(llm, temperature=0.2, seed=seed)]
    hot = [t for seed in range(6) for t in run(llm, temperature=2.0, seed=seed)]
    assert distinct(hot) > distinct(cold)


def test_top_k_limits_choices_to_the_top_tokens(llm):
    (output,) = llm.generate(
        [PROMPT], SamplingParams(temperature=2.0, top_k=2, seed=5, max_tokens=24, ignore_eos=True, logprobs=2)
    )
    for step in output.outputs[0].logprobs:
        assert step.token_id in step.top  # every draw is one of the two most likely tokens


@pytest.mark.parametrize(
    ("penalty", "discouraging", "encouraging"),
    [
        ("repetition_penalty", 2.0, 0.5),
        ("frequency_penalty", 2.0, -2.0),
        ("presence_penalty", 2.0, -2.0),
    ],
)
def test_penalties_change_repetition_in_the_expected_direction(llm, penalty, discouraging, encouraging):
    plain = run(llm, temperature=0.0, max_tokens=40)
    assert distinct(run(llm, temperature=0.0, max_tokens=40, **{penalty: discouraging})) > distinct(plain)
    assert distinct(run(llm, temperature=0.0, max_tokens=40, **{penalty: encouraging})) <= distinct(plain)


def test_stop_string_across_token_boundaries_is_cut_and_not_leaked(llm):
    full = llm.generate([PROMPT], SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True))[0].outputs[
        0
    ]
    tokenizer = llm.tokenizer
    pieces = [tokenizer.decode(full.token_ids[: i + 1]) for i in range(len(full.token_ids))]
    # A stop string that starts inside token 3's text and ends inside token 5's text.
    start = len(pieces[2]) - 1
    stop = full.text[start : len(pieces[4]) - 1]
    assert len(stop) >= 2 and full.text.find(stop) == start
    cut = llm.generate([PROMPT], SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, stop=[stop]))
    assert cut[0].outputs[0].text == full.text[:start]
    assert cut[0].outputs[0].finish_reason == "stop" and cut[0].outputs[0].stop_reason == stop
    kept = llm.generate(
        [PROMPT],
        SamplingParams(
            temperature=0.0, max_tokens=24, ignore_eos=True, stop=[stop], include_stop_str_in_output=True
        ),
    )
    assert kept[0].outputs[0].text == full.text[: start + len(stop)]


def test_stop_token_ids_and_eos_end_the_sequence(llm):
    greedy = run(llm, temperature=0.0)
    stop_token = greedy[4]
    first = greedy.index(stop_token)
    stopped = llm.generate(
        [PROMPT], SamplingParams(temperature=0.0, max_tokens=24, stop_token_ids=[stop_token])
    )
    completion = stopped[0].outputs[0]
    assert completion.token_ids == greedy[: first + 1]
    assert completion.finish_reason == "stop" and completion.stop_reason == stop_token
    assert completion.text == llm.tokenizer.decode(greedy[:first])
    engine = llm.engine
    saved = engine.eos_token_ids
    engine.eos_token_ids = frozenset({stop_token})
    try:
        assert run(llm, temperature=0.0, ignore_eos=False) == greedy[: first + 1]
        assert run(llm, temperature=0.0, ignore_eos=True) == greedy
    finally:
        engine.eos_token_ids = saved


def test_min_tokens_holds_back_stop_tokens(llm):
    greedy = run(llm, temperature=0.0)
    banned = greedy[0]
    output = run(llm, temperature=0.0, stop_token_ids=[banned], min_tokens=5, max_tokens=24, ignore_eos=False)
    assert len(output) >= 5 and banned not in output[:5]


def test_max_tokens_bounds_the_output(llm):
    for max_tokens in (1, 7):
        (output,) = llm.generate(
            [PROMPT], SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        )
        assert len(output.outputs[0].token_ids) == max_tokens and output.outputs[0].finish_reason == "length"


def test_logprobs_report_the_chosen_token_and_the_top_alternatives(llm):
    (output,) = llm.generate(
        [PROMPT], SamplingParams(temperature=0.0, max_tokens=5, logprobs=3, ignore_eos=True)
    )
    completion = output.outputs[0]
    assert len(completion.logprobs) == 5
    for token_id, step in zip(completion.token_ids, completion.logprobs, strict=True):
        assert step.token_id == token_id and step.logprob <= 0.0
        assert len(step.top) == 3
        assert max(step.top, key=step.top.get) == token_id  # greedy picks the most likely token
        assert step.top[token_id] == pytest.approx(step.logprob)


def test_n_samples_are_indexed_and_differ(llm):
    (output,) = llm.generate(
        [PROMPT], SamplingParams(n=3, temperature=1.5, seed=9, max_tokens=16, ignore_eos=True)
    )
    assert [c.index for c in output.outputs] == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in output.outputs}) == 3


def test_invalid_parameters_name_the_field():
    for field, value in [
        ("temperature", -1.0),
        ("top_p", 0.0),
        ("max_tokens", 0),
        ("logprobs", 21),
        ("n", 0),
    ]:
        with pytest.raises(ValueError, match=field):
            SamplingParams(**{field: value})
