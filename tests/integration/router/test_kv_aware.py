"""vllm-router's ``kv_aware`` policy fed by real MILI workers' KV events (worker/kv_events.py).

The proof of precise routing: a prompt computed on worker A is routed to A; A then evicts it and
worker B computes it; the router now routes it to B, and B serves it from its prefix cache. A router
that guessed from what it sent itself would still pick A. The event sources are given as the operator
renders them (``--worker-urls`` + ``--kv-event-source``): vllm-router 0.1.17 asks other workers for
``/get_server_info`` and ``/kv_event_sources`` but subscribes only to static sources (docs/routing.md).
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import openai
import pytest
from integration.router.conftest import API_KEY
from integration.router.processes import BLOCK_SIZE, NUM_KV_BLOCKS, SERVED_NAME, Router, Worker

from mili_testing import wait_until

pytestmark = pytest.mark.slow

PROMPT_BLOCKS = 12
FILLER_BLOCKS = 27  # two fillers overflow the pool: least recently used blocks (the prompt's) go first


def send(url: str, tokens: list[int] | str) -> None:
    api = openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0, timeout=120)
    api.completions.create(model=SERVED_NAME, prompt=tokens, max_tokens=1, temperature=0)


def served_by(workers: list[Worker], send_one: Callable[[], None]) -> int:
    """Index of the worker whose finished-request count rose when ``send_one()`` ran."""
    before = [worker.requests_served() for worker in workers]
    send_one()

    def moved() -> list[int]:
        return [i for i, worker in enumerate(workers) if worker.requests_served() > before[i]]

    changed = wait_until(moved, "a worker to count the request", timeout=30)
    assert len(changed) == 1, f"one request counted on workers {changed}"
    return changed[0]


def prefix_hits(worker: Worker, send_one: Callable[[], None]) -> float:
    """Prompt tokens ``worker`` found in its prefix cache while ``send_one()`` ran."""
    before = worker.prefix_tokens()[1]
    send_one()
    return worker.prefix_tokens()[1] - before


def kv_aware_args(workers: list[Worker], replay: bool) -> list[str]:
    """The router's kv_aware arguments as the operator renders them, with or without replay sources."""
    args = ["--policy", "kv_aware", "--kv-event-block-size", str(BLOCK_SIZE), "--kv-event-model", SERVED_NAME]
    for worker in workers:
        # The workers bind tcp://*:PORT, as pods do; the router connects to each worker's own address.
        args += ["--kv-event-source", f"{worker.url}={worker.kv_events.replace('*', worker.host)}"]
        if replay:
            args += ["--kv-event-replay-source", f"{worker.url}={worker.kv_replay.replace('*', worker.host)}"]
    return args


@pytest.fixture(scope="module")
def kv_router(start_router: Callable[..., Router], workers: list[Worker]) -> Router:
    return start_router(*kv_aware_args(workers, replay=False))


def test_kv_aware_follows_the_worker_that_holds_the_prefix_after_an_eviction(
    workers: list[Worker], kv_router: Router
) -> None:
    assert 2 * FILLER_BLOCKS + PROMPT_BLOCKS > NUM_KV_BLOCKS >= FILLER_BLOCKS + PROMPT_BLOCKS
    router = kv_router
    holder, other = workers
    prompt = [11 + (i % 97) for i in range(PROMPT_BLOCKS * BLOCK_SIZE)]  # tokens < the tiny vocab (465)
    cached = (PROMPT_BLOCKS - 1) * BLOCK_SIZE  # at least this much of a re-sent prompt is a cache hit

    send(holder.url, prompt)  # straight to the holder: only its KV events can tell the router
    # Twice each way, so neither round-robin nor a lucky draw passes.
    for _ in range(2):
        hits = prefix_hits(holder, lambda: assert_served_by(workers, router, prompt, 0))
        assert hits >= cached, f"routed to the holder but it found {hits} tokens cached"

    # The holder evicts the prompt under two fillers; the other worker computes it.
    for filler in range(2):
        start = 200 + 100 * filler
        send(holder.url, [start + (i % 50) for i in range(FILLER_BLOCKS * BLOCK_SIZE)])
    send(other.url, prompt)
    for _ in range(2):
        hits = prefix_hits(other, lambda: assert_served_by(workers, router, prompt, 1))
        assert hits >= cached, f"routed to the new holder but it found {hits} tokens cached"

    # The eviction was real: the first holder computes the prompt from scratch now.
    assert prefix_hits(holder, lambda: send(holder.url, prompt)) < BLOCK_SIZE


def assert_served_by(workers: list[Worker], router: Router, prompt: list[int] | str, expected: int) -> None:
    chosen = served_by(workers, lambda: send(router.url, prompt))
    assert chosen == expected, (
        f"the router sent the prompt to worker {chosen}, not {expected}; KV counters: {router.kv_counters()}"
    )


def test_workers_describe_their_kv_event_publisher_for_the_router(workers: list[Worker]) -> None:
    for worker in workers:
        info = httpx.get(f"{worker.url}/get_server_info", timeout=10).json()
        assert info["model_id"] == SERVED_NAME and info["kv_block_size"] == BLOCK_SIZE
        sources = httpx.get(f"{worker.url}/kv_event_sources", timeout=10).json()
        assert sources == {
            "0": {
                "endpoint": worker.kv_events,
                "replay_endpoint": worker.kv_replay,
                "topic": "",
                "publisher": "zmq",
                "enable_kv_cache_events": True,
            }
        }
    ids = {httpx.get(f"{worker.url}/get_server_info", timeout=10).json()["instance_id"] for worker in workers}
    assert len(ids) == len(workers), "each worker is its own event source"


def test_text_prompts_are_rendered_to_token_ids_and_routed_to_their_holder(
    workers: list[Worker], kv_router: Router
) -> None:
    text = "The lighthouse keeper counted the ships " * 12  # a dozen blocks in the tiny tokenizer
    body = {"model": SERVED_NAME, "prompt": text, "max_tokens": 1, "ignore_eos": True}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    rendered = httpx.post(f"{workers[1].url}/v1/completions/render", json=body, headers=headers, timeout=30)
    tokenized = httpx.post(f"{workers[1].url}/tokenize", json={"prompt": text}, headers=headers, timeout=30)
    assert rendered.status_code == 200, rendered.text
    assert rendered.json() == [{"model": SERVED_NAME, "token_ids": tokenized.json()["tokens"]}]
    assert len(tokenized.json()["tokens"]) >= 4 * BLOCK_SIZE
    for bad in ({"model": SERVED_NAME}, {"model": SERVED_NAME, "prompt": {"text": text}}):
        refused = httpx.post(f"{workers[1].url}/v1/completions/render", json=bad, headers=headers, timeout=30)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "prompt", refused.text

    send(workers[1].url, text)  # the second worker holds it: not the one a tie would pick
    for _ in range(2):
        assert_served_by(workers, kv_router, text, 1)
    assert kv_router.kv_counters().get(
        "vllm_router_kv_routing_inputs_total{'result': 'render', 'transport': 'http'}"
    )


@pytest.mark.parametrize("replay", [True, False], ids=["replay", "no-replay"])
def test_a_router_started_late_learns_earlier_blocks_by_replay(
    workers: list[Worker], start_router: Callable[..., Router], replay: bool
) -> None:
    """A router that starts (or restarts) after a worker cached a prompt sees the next live event's
    sequence number jump, asks the worker's replay socket for what it missed, and routes the prompt to
    its holder. Without replay sources it cannot know: its lookup misses."""
    holder = workers[1]
    base = 31 if replay else 37  # a prompt no other test sends, different for each run
    prompt = [base + (i % 89) for i in range(8 * BLOCK_SIZE)]
    send(holder.url, prompt)
    replays_before = holder.log_path.read_text().count("replayed")
    router = start_router(*kv_aware_args(workers, replay=replay))
    send(holder.url, [400 + (i % 60) for i in range(2 * BLOCK_SIZE)])  # a live event, seen out of sequence
    if replay:
        wait_until(
            lambda: holder.log_path.read_text().count("replayed") > replays_before,
            "the holder to replay its KV events to the new router",
            timeout=30,
        )
        assert_served_by(workers, router, prompt, 1)
    else:
        send(router.url, prompt)
    lookups = {
        key: value
        for key, value in router.kv_counters().items()
        if key.startswith("vllm_router_kv_placement")
    }
    outcome = "hit" if replay else "miss"
    assert lookups == {f"vllm_router_kv_placement_lookups_total{{'result': '{outcome}'}}": 1}, lookups
