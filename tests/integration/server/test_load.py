"""Concurrency: many streaming clients under KV-cache pressure, and clients that walk away."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest

from mili.worker import LLM, SamplingParams

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paged attention stores keys and values in fixed-size blocks.",
    "Continuous batching admits new requests at every step.",
    "Prefix caching shares the KV of common prompt prefixes across requests.",
]
NUM_STREAMS = 64
MAX_TOKENS = 32


def load_prompts() -> list[str]:
    return [f"{i}: {CORPUS[i % len(CORPUS)][: 12 + (i * 7) % 30]}" for i in range(NUM_STREAMS)]


@pytest.fixture(scope="module")
def small_pool_server(start_server, tiny_config):
    """24 blocks of 16 tokens: about five of the 64 requests fit at once, so the scheduler must preempt.

    float32 (as the large pool below): a preempted sequence is recomputed by prefill, whose attention
    kernel rounds differently from decode's, and in bfloat16 that can flip a near-tie of the tiny
    random model's greedy choice; the test is about preemption losing nothing, not about rounding."""
    return start_server(tiny_config(num_kv_blocks=24, max_model_len=256, dtype="float32"))


async def stream_completion(client: openai.AsyncOpenAI, prompt: str) -> tuple[str, str]:
    stream = await client.completions.create(
        model="tiny", prompt=prompt, max_tokens=MAX_TOKENS, temperature=0, stream=True
    )
    text, finish_reason = [], None
    async for chunk in stream:
        for choice in chunk.choices:
            text.append(choice.text)
            finish_reason = choice.finish_reason or finish_reason
    return "".join(text), finish_reason


def test_64_streams_under_preemption_match_a_large_pool(small_pool_server, tiny_qwen3_dir, poll):
    prompts = load_prompts()

    async def run_all():
        client = openai.AsyncOpenAI(
            base_url=f"{small_pool_server.url}/v1", api_key="x", max_retries=0, timeout=120
        )
        async with client:
            return await asyncio.gather(*(stream_completion(client, prompt) for prompt in prompts))

    preemptions_before = small_pool_server.sample("mili_preemptions_total")
    started = time.monotonic()
    results = asyncio.run(run_all())
    print(f"64 streams: {time.monotonic() - started:.1f} s")
    assert all(reason in ("stop", "length") for _, reason in results)
    assert small_pool_server.sample("mili_preemptions_total") > preemptions_before, "the pool never ran dry"

    large_pool = LLM(model=str(tiny_qwen3_dir), max_model_len=256, device="cpu", dtype="float32")
    expected = large_pool.generate(prompts, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS))
    assert [text for text, _ in results] == [output.outputs[0].text for output in expected]
    engine = small_pool_server.engine.engine
    poll(lambda: not engine.has_unfinished_requests(), 5, "the engine is idle")
    assert all(count == 0 for count in engine.block_manager.ref_counts)


async def stream_then_leave(client: httpx.AsyncClient, url: str, started: asyncio.Event) -> None:
    """Open a long stream, wait for its first token and the signal, then drop the connection."""
    body = {
        "model": "tiny",
        "prompt": "Paged attention",
        "max_tokens": 480,
        "ignore_eos": True,
        "stream": True,
    }
    async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        assert response.status_code == 200
        lines = response.aiter_lines()  # held: a dropped line iterator would close the connection early
        async for line in lines:
            if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["text"]:
                break
        await started.wait()
        await lines.aclose()
    # leaving the block closes the connection mid-stream


async def post_then_leave(host: str, port: int, started: asyncio.Event) -> None:
    """A non-streaming request whose client hangs up before the answer."""
    body = json.dumps({"model": "tiny", "prompt": "Blocks", "max_tokens": 480, "ignore_eos": True}).encode()
    _reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    await started.wait()
    writer.close()
    await writer.wait_closed()


def test_50_disconnecting_clients_free_every_block(server, poll):
    host, port = server.url.removeprefix("http://").split(":")
    aborted_before = server.sample("mili_requests_total", finish_reason="abort")

    def in_flight() -> float:
        return server.sample("mili_num_requests_running") + server.sample("mili_num_requests_waiting")

    async def run_all():
        started = asyncio.Event()
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100)) as client:
            clients = [asyncio.create_task(stream_then_leave(client, server.url, started)) for _ in range(40)]
            clients += [asyncio.create_task(post_then_leave(host, int(port), started)) for _ in range(10)]
            deadline = time.monotonic() + 30
            while (count := in_flight()) < 50:  # every request is in the engine before anyone leaves
                for task in clients:
                    if task.done():
                        task.result()  # a client that failed: raise its error
                assert time.monotonic() < deadline, f"only {count:.0f} of 50 requests reached the engine"
                await asyncio.sleep(0.05)
            started.set()
            await asyncio.gather(*clients)

    asyncio.run(asyncio.wait_for(run_all(), timeout=60))
    poll(lambda: in_flight() == 0, 20, "the aborted requests left the engine")
    assert server.sample("mili_requests_total", finish_reason="abort") - aborted_before == 50
    assert server.sample("mili_kv_cache_usage_ratio") == 0.0
    engine = server.engine.engine
    poll(lambda: not engine.has_unfinished_requests(), 5, "the engine is idle")
    assert all(count == 0 for count in engine.block_manager.ref_counts)
    after = httpx.post(
        f"{server.url}/v1/completions", json={"prompt": "still there?", "max_tokens": 3}, timeout=30
    )
    assert after.status_code == 200 and after.json()["choices"][0]["text"]
