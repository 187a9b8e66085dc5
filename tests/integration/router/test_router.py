"""The real vllm-router in front of real MILI workers: the OpenAI API passes through unchanged, API
keys work end to end, and cache_aware keeps a shared-prefix family on one worker's prefix cache."""

from __future__ import annotations

import httpx
import openai
import pytest
from integration.router.conftest import API_KEY
from integration.router.processes import SERVED_NAME, Router, Worker

pytestmark = pytest.mark.slow

FAMILY_PREFIXES = (
    "You are a meticulous astronomy tutor. Answer every question about planets, moons and orbits with "
    "care, citing the relevant physics, and keep each answer short and friendly. Question: ",
    "You are a patient cooking assistant. Explain each recipe step by step, name every ingredient and "
    "its amount, and warn about common mistakes a beginner makes in the kitchen. Request: ",
)


def client(router: Router, api_key: str = API_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{router.url}/v1", api_key=api_key, max_retries=0, timeout=60)


def test_completions_chat_and_streaming_pass_through(router: Router) -> None:
    api = client(router)
    assert [model.id for model in api.models.list().data] == [SERVED_NAME]

    completion = api.completions.create(model=SERVED_NAME, prompt="Hello there", max_tokens=4)
    assert completion.usage.completion_tokens == 4
    assert completion.choices[0].finish_reason == "length"

    chat = api.chat.completions.create(
        model=SERVED_NAME, messages=[{"role": "user", "content": "Hi!"}], max_tokens=4
    )
    assert chat.choices[0].message.role == "assistant"
    assert chat.usage.completion_tokens == 4

    stream = api.chat.completions.create(
        model=SERVED_NAME,
        messages=[{"role": "user", "content": "Count with me"}],
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert chunks[-1].usage.completion_tokens == 6
    assert text


def test_requests_without_the_api_key_are_refused_through_the_router(router: Router) -> None:
    with pytest.raises(openai.AuthenticationError):
        client(router, api_key="wrong-key").completions.create(model=SERVED_NAME, prompt="Hi", max_tokens=2)
    body = {"model": SERVED_NAME, "prompt": "Hi", "max_tokens": 2}
    response = httpx.post(f"{router.url}/v1/completions", json=body, timeout=30)
    assert response.status_code == 401, response.text


def test_cache_aware_keeps_each_prefix_family_on_one_worker(router: Router, workers: list[Worker]) -> None:
    api = client(router)
    for prefix in FAMILY_PREFIXES:
        before = [worker.prefix_tokens() for worker in workers]
        for question in range(4):
            api.completions.create(model=SERVED_NAME, prompt=f"{prefix}number {question}?", max_tokens=2)
        after = [worker.prefix_tokens() for worker in workers]
        queried = [now[0] - then[0] for now, then in zip(after, before, strict=True)]
        hits = [now[1] - then[1] for now, then in zip(after, before, strict=True)]
        serving = [index for index, tokens in enumerate(queried) if tokens > 0]
        assert len(serving) == 1, f"family spread over workers: queried tokens {queried}"
        # Three of the four requests find the family's shared prefix (30+ tokens) in that worker's cache.
        assert hits[serving[0]] >= 3 * 32, f"prefix hits {hits} of queried {queried}"
    assert sum(router.decisions().values()) >= 2 * 4
