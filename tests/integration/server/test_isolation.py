"""No request can hurt another: a victim stream survives a battery of hostile requests.

The battery server has an API key, a queue of 8 and a 256 KiB body limit. While the victim streams,
every kind of bad input is sent (each must get its 4xx naming the field), bodies too large (413, and
401 first without the key), and 1,000 tiny requests at once (each 200 or 503 with Retry-After). The
victim must still get all its tokens, nothing may answer 5xx, and the server must still serve.
"""

from __future__ import annotations

import asyncio
import resource

import httpx
import openai
import pytest

from mili.worker.server.limits import ServerLimits

KEY = "battery-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_MODEL_LEN = 512
QUEUE = 8
BODY_LIMIT = 256 * 1024
VICTIM_TOKENS = 400
NUM_TINY = 1000

# (what it is, body or raw JSON text, the param the 400 must name)
BAD_INPUTS = [
    ("the issue's crash: stop id out of vocab with min_tokens",
     {"prompt": "hi", "max_tokens": 8, "min_tokens": 4, "stop_token_ids": [1_000_000_000]}, "stop_token_ids"),
    ("negative stop token id", {"prompt": "hi", "stop_token_ids": [-1]}, "stop_token_ids"),
    ("prompt id out of vocab", {"prompt": [1, 10**9]}, "prompt"),
    ("negative prompt id", {"prompt": [3, -5]}, "prompt"),
    ("prompt id past int64", {"prompt": [2**70]}, "prompt"),
    ("65 stop strings", {"prompt": "hi", "stop": [f"s{i}" for i in range(65)]}, "stop"),
    ("a stop string of 1,025 characters", {"prompt": "hi", "stop": ["x" * 1025]}, "stop"),
    ("prompts × n over 256", {"prompt": ["a"] * 17, "n": 16}, "n"),
    ("text over 16 × max_model_len characters", {"prompt": "a b " * (4 * MAX_MODEL_LEN + 1)}, "prompt"),
    ("max_tokens past int32", {"prompt": "hi", "max_tokens": 2**31}, "max_tokens"),
    ("seed past int64", {"prompt": "hi", "seed": 2**64}, "seed"),
    ("n past any limit", {"prompt": "hi", "n": 10**20}, "n"),
    ("top_k past int32", {"prompt": "hi", "top_k": 2**40}, "top_k"),
    ("infinite temperature", '{"prompt": "hi", "temperature": 1e999}', "temperature"),
    ("NaN top_p", '{"prompt": "hi", "top_p": NaN}', "top_p"),
]  # fmt: skip
# Odd but valid: served like any other request.
ODD_BUT_VALID = [
    {"prompt": "hi", "max_tokens": 4, "temperature": 1e-30},  # greedy, not NaN
    {"prompt": "hi", "max_tokens": 4, "top_p": 1e-300},
    {
        "prompt": "hi",
        "max_tokens": 24,
        "ignore_eos": True,
        "stop": [chr(0x4E00 + i) * 1024 for i in range(64)],
    },
]


@pytest.fixture(scope="module")
def battery_server(start_server, tiny_config):
    limits = ServerLimits(max_queued_requests=QUEUE, max_request_bytes=BODY_LIMIT)
    # 16 places in the batch + 8 queued: the flood must overflow that, however slowly it is sent.
    config = tiny_config(max_model_len=MAX_MODEL_LEN, max_num_seqs=16)
    return start_server(config, api_key=KEY, limits=limits)


def raise_open_file_limit(wanted: int) -> int:
    """Both ends of every connection live in this process: make room for them if the system allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


async def victim(url: str) -> tuple[int, str | None]:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=300)
    async with client:
        stream = await client.completions.create(
            model="tiny", prompt="The victim streams on", max_tokens=VICTIM_TOKENS, temperature=0,
            extra_body={"ignore_eos": True}, stream=True, stream_options={"include_usage": True},
        )  # fmt: skip
        tokens, finish_reason = 0, None
        async for chunk in stream:
            for choice in chunk.choices:
                finish_reason = choice.finish_reason or finish_reason
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
    return tokens, finish_reason


async def post(
    client: httpx.AsyncClient, body, headers=AUTH, path: str = "/v1/completions"
) -> httpx.Response:
    if isinstance(body, str):
        return await client.post(path, content=body, headers={**headers, "Content-Type": "application/json"})
    return await client.post(path, json=body, headers=headers)


async def oversized_chunks():
    for _ in range(BODY_LIMIT // 4096 + 8):
        yield b"x" * 4096


async def battery(url: str, started: asyncio.Event) -> dict[str, list[httpx.Response]]:
    await started.wait()
    connections = raise_open_file_limit(2 * NUM_TINY + 512) // 2 - 128
    limits = httpx.Limits(max_connections=min(NUM_TINY + 64, connections), max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        big = {"prompt": "x" * (BODY_LIMIT + 10)}
        chat = {"messages": [{"role": "user", "content": "a " * (8 * MAX_MODEL_LEN + 1)}]}
        tiny = {"prompt": "x", "max_tokens": 1}
        # One kind at a time: calls being validated count as queued, so a burst of bad ones could
        # (rightly) get the valid ones shed.
        bad = await asyncio.gather(
            *(post(client, body) for _, body, _ in BAD_INPUTS),
            post(client, chat, path="/v1/chat/completions"),
        )
        odd = await asyncio.gather(*(post(client, body) for body in ODD_BUT_VALID))
        too_large = [
            await post(client, big),
            await client.post("/v1/completions", content=oversized_chunks(), headers=AUTH),
        ]
        no_key = [await post(client, big, headers={})]
        flood = await asyncio.gather(*(post(client, tiny) for _ in range(NUM_TINY)))
        after = [await post(client, {"prompt": "still serving", "max_tokens": 4})]
    return {"bad": bad, "odd": odd, "too_large": too_large, "no_key": no_key, "flood": flood, "after": after}


def test_a_victim_stream_survives_a_battery_of_hostile_requests(battery_server):
    url = battery_server.url
    errors_before = battery_server.sample("mili_requests_total", finish_reason="error")
    shed_before = battery_server.sample("mili_requests_rejected_total", reason="queue_full")

    async def run():
        started = asyncio.Event()

        async def victim_then_signal():
            task = asyncio.ensure_future(victim(url))
            # Start the battery once the victim is in the engine.
            while not battery_server.engine.engine.requests and not task.done():
                await asyncio.sleep(0.01)
            started.set()
            return await task

        return await asyncio.gather(victim_then_signal(), battery(url, started))

    (tokens, finish_reason), results = asyncio.run(run())
    assert (tokens, finish_reason) == (VICTIM_TOKENS, "length")
    expected = [*BAD_INPUTS, ("chat over 16 × max_model_len characters", None, "messages")]
    for (what, _, param), response in zip(expected, results["bad"], strict=True):
        assert response.status_code == 400, (what, response.status_code, response.text)
        assert response.json()["error"]["param"] == param, (what, response.text)
    for response in results["odd"]:
        assert response.status_code == 200, response.text
    for response in results["too_large"]:
        assert response.status_code == 413, response.text
        assert response.json()["error"]["code"] == "request_too_large"
    assert [r.status_code for r in results["no_key"]] == [401]
    statuses = [response.status_code for response in results["flood"]]
    assert set(statuses) <= {200, 503}, sorted(set(statuses))
    served = [response for response in results["flood"] if response.status_code == 200]
    assert all(response.json()["usage"]["completion_tokens"] == 1 for response in served)  # none dropped
    shed = [response for response in results["flood"] if response.status_code == 503]
    assert shed and len(shed) < NUM_TINY, f"{len(shed)} of {NUM_TINY} shed"
    for response in shed:
        assert response.headers["Retry-After"] == "1"
        assert response.json()["error"] | {"message": ""} == {
            "message": "", "type": "service_unavailable", "param": None, "code": "queue_full"
        }  # fmt: skip
    assert [r.status_code for r in results["after"]] == [200]
    assert battery_server.sample("mili_requests_total", finish_reason="error") == errors_before
    shed_counted = battery_server.sample("mili_requests_rejected_total", reason="queue_full") - shed_before
    assert shed_counted == len(shed)
    assert battery_server.sample("mili_max_queued_requests") == QUEUE
