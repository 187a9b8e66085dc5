"""The official openai client against a running server: completions and chat, streamed and not."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from mili.worker import LLM, SamplingParams

PROMPT = "The quick brown fox"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Paged attention?"}]


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def offline(tiny_qwen3_dir: Path) -> LLM:
    """The same checkpoint through the offline API: the reference for greedy outputs."""
    return LLM(model=str(tiny_qwen3_dir), max_model_len=512, device="cpu")


def greedy(offline: LLM, prompt, max_tokens: int, **params) -> str:
    return (
        offline.generate(prompt, SamplingParams(temperature=0.0, max_tokens=max_tokens, **params))[0]
        .outputs[0]
        .text
    )


def test_models_lists_the_served_name(client):
    models = client.models.list().data
    assert [model.id for model in models] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"


def test_completion_matches_the_offline_engine(client, offline):
    result = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, temperature=0)
    assert result.choices[0].text == greedy(offline, PROMPT, 12)
    assert result.choices[0].finish_reason in ("stop", "length")
    prompt_tokens = len(offline.tokenizer.encode(PROMPT))
    assert result.usage.prompt_tokens == prompt_tokens
    assert result.usage.total_tokens == prompt_tokens + result.usage.completion_tokens


def test_streamed_completion_adds_up_to_the_whole(client, offline):
    chunks = list(
        client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, temperature=0, stream=True)
    )
    assert "".join(chunk.choices[0].text for chunk in chunks if chunk.choices) == greedy(offline, PROMPT, 12)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert all(chunk.usage is None for chunk in chunks)  # usage only with stream_options.include_usage


def test_stream_options_include_usage_sends_a_usage_chunk_last(client):
    chunks = list(
        client.completions.create(
            model="tiny", prompt=PROMPT, max_tokens=5, stream=True, stream_options={"include_usage": True},
            temperature=0, extra_body={"ignore_eos": True},
        )
    )  # fmt: skip
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert all(chunk.usage is None for chunk in chunks[:-1])


def test_chat_matches_the_offline_engine(client, offline):
    result = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=10, temperature=0)
    expected = offline.chat(MESSAGES, SamplingParams(temperature=0.0, max_tokens=10))[0]
    assert result.choices[0].message.role == "assistant"
    assert result.choices[0].message.content == expected.outputs[0].text
    assert result.usage.prompt_tokens == len(expected.prompt_token_ids)


def test_streamed_chat_adds_up_to_the_whole(client):
    whole = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=10, temperature=0)
    stream = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=10, temperature=0, stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == whole.choices[0].message.content
    )
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_n_samples_give_n_distinct_choices(client):
    result = client.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=8, n=3, temperature=1.0, seed=7
    )
    assert sorted(choice.index for choice in result.choices) == [0, 1, 2]
    assert len({choice.text for choice in result.choices}) > 1  # random tiny model: samples differ
    assert 3 <= result.usage.completion_tokens <= 24
    streamed = list(
        client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4, n=2, stream=True)
    )
    assert {c.choices[0].index for c in streamed if c.choices} == {0, 1}


def test_seeded_sampling_is_reproducible(client):
    def sample():
        return client.completions.create(model="tiny", prompt=PROMPT, max_tokens=8, temperature=1.0, seed=123)

    assert sample().choices[0].text == sample().choices[0].text


def test_stop_string_ends_the_text_before_it(client, offline):
    full = greedy(offline, PROMPT, 16, ignore_eos=True)
    stop = full[5:8]
    assert stop.strip(), f"pick a visible stop string from {full!r}"
    result = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=16, temperature=0, stop=[stop])
    choice = result.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.text == full[: full.index(stop)]


def test_completion_logprobs(client):
    result = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=6, temperature=0, logprobs=2)
    logprobs = result.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == result.usage.completion_tokens
    assert all(lp <= 0 for lp in logprobs.token_logprobs)
    assert all(1 <= len(top) <= 2 for top in logprobs.top_logprobs)
    # greedy: the sampled token is the most likely one
    assert all(
        max(top.values()) == pytest.approx(lp)
        for top, lp in zip(logprobs.top_logprobs, logprobs.token_logprobs, strict=True)
    )


def test_echo_with_logprobs_starts_with_the_prompt_tokens(client, offline):
    prompt_ids = offline.tokenizer.encode(PROMPT)
    expected = offline.generate(PROMPT, SamplingParams(max_tokens=1, prompt_logprobs=2))[0].prompt_logprobs
    body = dict(model="tiny", prompt=PROMPT, max_tokens=4, temperature=0, logprobs=2, echo=True)
    whole = client.completions.create(**body).choices[0]
    logprobs = whole.logprobs
    assert len(logprobs.tokens) == len(prompt_ids) + 4 and whole.text.startswith(PROMPT)
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    for entry, logprob in zip(expected[1:], logprobs.token_logprobs[1 : len(prompt_ids)], strict=True):
        assert logprob == pytest.approx(entry.logprob, abs=1e-4)
    assert logprobs.text_offset == sorted(logprobs.text_offset)
    streamed = list(client.completions.create(**body, stream=True))
    first = streamed[0].choices[0]
    assert first.text.startswith(PROMPT) and first.logprobs.token_logprobs[0] is None
    tokens = [t for chunk in streamed for t in chunk.choices[0].logprobs.tokens]
    assert tokens == logprobs.tokens


def test_vllm_prompt_logprobs(client, offline):
    expected = offline.generate(PROMPT, SamplingParams(max_tokens=1, prompt_logprobs=1))[0].prompt_logprobs
    result = client.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=1, extra_body={"prompt_logprobs": 1}
    )
    chat = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=1, extra_body={"prompt_logprobs": 0}
    )
    prompt_logprobs = result.choices[0].model_extra["prompt_logprobs"]
    assert prompt_logprobs[0] is None and len(prompt_logprobs) == len(expected)
    for entry, given in zip(expected[1:], prompt_logprobs[1:], strict=True):
        assert given[str(entry.token_id)]["logprob"] == pytest.approx(entry.logprob, abs=1e-4)
        assert given[str(entry.token_id)]["rank"] == entry.rank
        assert any(value["rank"] == 1 for value in given.values())
    assert len(chat.model_extra["prompt_logprobs"]) == chat.usage.prompt_tokens
    with pytest.raises(openai.BadRequestError, match="prompt_logprobs"):
        client.completions.create(
            model="tiny", prompt=PROMPT, max_tokens=1, stream=True, extra_body={"prompt_logprobs": 1}
        )


def test_chat_logprobs(client):
    result = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3
    )
    content = result.choices[0].logprobs.content
    assert len(content) == result.usage.completion_tokens
    assert all(len(entry.top_logprobs) == 3 for entry in content)
    assert all(entry.logprob == pytest.approx(entry.top_logprobs[0].logprob) for entry in content)


def test_a_batch_of_prompts_gets_choices_in_prompt_order(client, offline):
    prompts = [PROMPT, "Prefix caching shares"]
    result = client.completions.create(model="tiny", prompt=prompts, max_tokens=6, temperature=0)
    assert [choice.index for choice in result.choices] == [0, 1]
    assert [choice.text for choice in result.choices] == [greedy(offline, p, 6) for p in prompts]


def test_token_id_prompts_are_accepted(client, offline):
    token_ids = offline.tokenizer.encode(PROMPT)
    result = client.completions.create(model="tiny", prompt=token_ids, max_tokens=6, temperature=0)
    assert result.choices[0].text == greedy(offline, PROMPT, 6)


def test_errors_reach_the_client_as_openai_errors(client):
    with pytest.raises(openai.NotFoundError) as raised:
        client.completions.create(model="no-such-model", prompt=PROMPT, max_tokens=4)
    assert "no-such-model" in raised.value.message
    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model="tiny", prompt="x " * 600, max_tokens=4)
    assert "512" in raised.value.message
