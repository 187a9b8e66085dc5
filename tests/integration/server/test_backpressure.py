"""Clients that read slowly or ask for a lot cost what they asked for, and nobody else waits.

A stream whose reader reads nothing holds its output once (deltas are added up, never queued as
copies), and a large non-streaming body is built off the event loop, so /health still answers.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from mili_testing.tiny_models import build_tiny_model

STALLED_TOKENS = 2000
STALLED_N = 4
MAX_RSS_GROWTH = 50 * 2**20


@pytest.fixture(scope="module")
def long_context_server(start_server, tiny_config, tmp_path_factory):
    """The tiny Qwen3 with a 4096-position context, so one stream can run 2,000 tokens."""
    model_dir = build_tiny_model(tmp_path_factory.mktemp("long") / "qwen3", "Qwen3ForCausalLM",
                                 max_position_embeddings=4096)  # fmt: skip
    return start_server(tiny_config(model=str(model_dir), max_model_len=2100))


def resident_bytes() -> int:
    """This process's resident memory (the server runs in it, on a thread)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def open_stalled_stream(url: str, body: dict) -> socket.socket:
    """Send a streaming request on a socket with a tiny receive buffer, and read nothing."""
    host, port = url.removeprefix("http://").split(":")
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect((host, int(port)))
    payload = json.dumps(body).encode()
    head = f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    client.sendall(head.encode() + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    return client


def read_all(client: socket.socket) -> bytes:
    client.settimeout(120)
    chunks = []
    while chunk := client.recv(1 << 16):
        chunks.append(chunk)
        if chunk.endswith(b"data: [DONE]\n\n") or b"data: [DONE]\n\n0\r\n\r\n" in chunk[-32:]:
            break
    return b"".join(chunks)


def test_a_reader_that_reads_nothing_costs_its_output_once(long_context_server, poll):
    url, engine = long_context_server.url, long_context_server.engine.engine
    body = {"prompt": "Stalled", "max_tokens": STALLED_TOKENS, "n": STALLED_N, "logprobs": 5,
            "ignore_eos": True, "stream": True}  # fmt: skip
    warm = open_stalled_stream(url, body | {"max_tokens": 64})  # pay one-time allocations first
    read_all(warm)
    warm.close()
    before = resident_bytes()
    client = open_stalled_stream(url, body)
    try:
        poll(lambda: engine.requests, 30, "the stalled request reached the engine")
        poll(lambda: not engine.requests, 300, "the engine finished the stalled request")
        growth = resident_bytes() - before
        events = read_all(client)
    finally:
        client.close()
    chunks = [json.loads(line[6:]) for line in events.decode().split("\r\n") if line.startswith("data: {")]
    tokens = sum(len(choice["logprobs"]["tokens"]) for chunk in chunks for choice in chunk["choices"])
    assert tokens == STALLED_TOKENS * STALLED_N  # everything arrived, once the client read
    assert growth < MAX_RSS_GROWTH, f"the worker grew {growth / 2**20:.0f} MiB for one unread stream"


def test_health_answers_while_a_large_response_is_built(server):
    # 16 choices × 480 tokens × 20 top logprobs: chat logprobs are ~8 MiB of JSON, seconds of building.
    body = {"messages": [{"role": "user", "content": "hi"}], "n": 16, "max_tokens": 480, "logprobs": True,
            "top_logprobs": 20, "ignore_eos": True, "temperature": 0}  # fmt: skip
    result: dict = {}

    def large_call() -> None:
        response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=300)
        result["status"], result["size"] = response.status_code, len(response.content)

    caller = threading.Thread(target=large_call)
    caller.start()
    slowest = 0.0
    while caller.is_alive():
        started = time.monotonic()
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.05)
    caller.join()
    assert result["status"] == 200 and result["size"] > 4 * 2**20
    assert slowest < 1.0, f"/health took {slowest:.2f} s while the response was built"
