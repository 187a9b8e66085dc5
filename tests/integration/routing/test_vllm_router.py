"""The real vllm-router in front of real `mili serve` workers.

It proxies the OpenAI API unchanged (completions, chat, streaming), and with ``--policy kv_aware`` fed by
the workers' KV events (worker/kv_events.py) it routes a prompt to the worker that holds its prefix now,
not to the one that held it before evicting it.
"""

from __future__ import annotations

import openai
import pytest

from mili_testing import wait_until

from .conftest import BLOCK_SIZE, SERVED_NAME

pytestmark = pytest.mark.timeout(600)


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_router_proxies_completions_chat_and_streaming(start_router) -> None:
    api = client(start_router("cache_aware").url)
    completion = api.completions.create(model=SERVED_NAME, prompt="Routing test", max_tokens=4, temperature=0)
    assert completion.usage.completion_tokens == 4 and completion.choices[0].finish_reason == "length"
    chat = api.chat.completions.create(
        model=SERVED_NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=3, temperature=0
    )
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens == 3
    chunks = list(
        api.chat.completions.create(
            model=SERVED_NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=3, stream=True
        )
    )
    assert chunks[-1].choices[0].finish_reason == "length"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 1


def served_by(workers, send) -> int:
    """Index of the worker whose finished-request count rose when ``send()`` ran."""
    before = [w.requests_served() for w in workers]
    send()

    def moved() -> list[int]:
        return [i for i, w in enumerate(workers) if w.requests_served() > before[i]]

    changed = wait_until(moved, "a worker to count the request", timeout=30)
    assert len(changed) == 1, f"one request counted on workers {changed}"
    return changed[0]


def test_kv_aware_follows_the_worker_that_holds_the_prefix_after_an_eviction(workers, start_router) -> None:
    sources = [arg for w in workers for arg in ("--kv-event-source", f"{w.url}={w.kv_events}")]
    router = start_router(
        "kv_aware", *sources, "--kv-event-block-size", str(BLOCK_SIZE), "--kv-event-model", SERVED_NAME
    )
    holder, other = workers
    prompt = [11 + (i % 97) for i in range(12 * BLOCK_SIZE)]  # 12 full blocks of a 40-block pool

    def send(url: str, tokens: list[int]) -> None:
        client(url).completions.create(model=SERVED_NAME, prompt=tokens, max_tokens=1, temperature=0)

    send(holder.url, prompt)  # straight to the holder: only its KV events tell the router
    # Twice each way, so neither round-robin nor a lucky draw passes.
    assert [served_by(workers, lambda: send(router.url, prompt)) for _ in range(2)] == [0, 0]

    # The holder evicts the prompt (two 27-block fillers through a 40-block pool, least recent first),
    # and the other worker computes it: the router must now send the prompt there.
    for start in (200, 300):
        send(holder.url, [start + (i % 50) for i in range(27 * BLOCK_SIZE)])
    send(other.url, prompt)
    assert [served_by(workers, lambda: send(router.url, prompt)) for _ in range(2)] == [1, 1]
