"""vLLM's tokenizer API on the shared tiny server: ``POST /tokenize`` and ``POST /detokenize``."""

from __future__ import annotations

import httpx
import pytest

MESSAGES = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def post(server):
    def call(path: str, body: dict) -> httpx.Response:
        return httpx.post(f"{server.url}{path}", json=body, timeout=60)

    return call


def test_tokenize_a_prompt_and_back(post, server):
    tokenizer = server.engine.tokenizer
    answer = post("/tokenize", {"prompt": "The quick brown fox", "return_token_strs": True}).json()
    assert answer["tokens"] == tokenizer.encode("The quick brown fox")
    assert answer["count"] == len(answer["tokens"]) and answer["max_model_len"] == server.engine.max_model_len
    assert answer["token_strs"] == tokenizer.convert_ids_to_tokens(answer["tokens"])
    assert post("/detokenize", {"tokens": answer["tokens"]}).json() == {"prompt": "The quick brown fox"}


def test_tokenize_messages_as_the_chat_endpoint_renders_them(post, server):
    answer = post("/tokenize", {"messages": MESSAGES, "model": "tiny"}).json()
    chat = httpx.post(
        f"{server.url}/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 1}, timeout=60
    ).json()
    assert answer["count"] == chat["usage"]["prompt_tokens"]
    assert "token_strs" not in answer or answer["token_strs"] is None


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/tokenize", {"prompt": "a", "messages": MESSAGES}, "prompt"),
        ("/tokenize", {}, "prompt"),
        ("/tokenize", {"messages": MESSAGES, "chat_template": "{{ x }}"}, "chat_template"),
        ("/tokenize", {"prompt": "a", "model": "other"}, "model"),
        ("/detokenize", {"tokens": [10**9]}, "tokens"),
    ],
)
def test_bad_requests_name_the_field(post, path, body, param):
    response = post(path, body)
    assert 400 <= response.status_code < 500
    assert response.json()["error"]["param"] == param, response.json()
