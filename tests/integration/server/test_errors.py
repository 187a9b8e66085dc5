"""Bad input gets a 4xx in OpenAI's error shape naming the problem; nothing stops the engine."""

from __future__ import annotations

import httpx
import pytest

BAD_REQUESTS = [
    # (path, raw body, status, words the message must contain)
    ("/v1/completions", b"{not json", 400, ["JSON"]),
    ("/v1/completions", b"[1, 2]", 400, ["body"]),
    ("/v1/completions", b'{"prompt": 5}', 400, ["prompt"]),
    ("/v1/completions", b'{"prompt": "hi", "max_tokens": "many"}', 400, ["max_tokens"]),
    ("/v1/completions", b'{"prompt": "hi", "max_tokens": -3}', 400, ["max_tokens"]),
    ("/v1/completions", b'{"prompt": "hi", "max_tokens": 100000000}', 400, ["max_tokens", "512"]),
    ("/v1/completions", b'{"prompt": "hi", "max_tokens": 99999999999999999999999}', 400, ["max_tokens"]),
    ("/v1/completions", b'{"prompt": ""}', 400, ["prompt", "empty"]),
    ("/v1/completions", b'{"prompt": []}', 400, ["prompt", "empty"]),
    ("/v1/completions", b'{"prompt": [[]]}', 400, ["prompt", "empty"]),
    ("/v1/completions", b'{"prompt": [1, -5]}', 400, ["token"]),
    ("/v1/completions", b'{"prompt": [99999999]}', 400, ["token"]),
    ("/v1/completions", b'{"prompt": "hi", "temperature": 2.5}', 400, ["temperature"]),
    ("/v1/completions", b'{"prompt": "hi", "temperature": NaN}', 400, ["temperature"]),
    ("/v1/completions", b'{"prompt": "hi", "top_p": 0}', 400, ["top_p"]),
    ("/v1/completions", b'{"prompt": "hi", "n": 0}', 400, ["n"]),
    ("/v1/completions", b'{"prompt": "hi", "logprobs": 50}', 400, ["logprobs"]),
    ("/v1/completions", b'{"prompt": "hi", "stop": [""]}', 400, ["stop"]),
    ("/v1/completions", b'{"prompt": "hi", "min_tokens": 9, "max_tokens": 3}', 400, ["min_tokens"]),
    ("/v1/completions", b'{"prompt": "hi", "seed": 1e400}', 400, ["seed"]),
    ("/v1/completions", b'{"prompt": "\\ud800 lone surrogate"}', 400, ["prompt"]),
    ("/v1/completions", b'{"prompt": "hi", "model": "gpt-4"}', 404, ["gpt-4"]),
    ("/v1/completions", b'{"prompt": "hi", "suffix": "!"}', 400, ["suffix"]),
    ("/v1/chat/completions", b'{"messages": []}', 400, ["messages"]),
    ("/v1/chat/completions", b'{"messages": [{"role": "wizard", "content": "x"}]}', 400, ["role"]),
    ("/v1/chat/completions", b'{"messages": [{"role": "user"}]}', 400, ["content"]),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}', 400,
     ["text"]),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}', 400,
     ["logprobs"]),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 0}',
     400, ["max_completion_tokens"]),
    ("/v1/nothing-here", b"{}", 404, ["Not Found"]),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "status", "words"), BAD_REQUESTS)
def test_bad_input_is_a_4xx_naming_the_problem(server, path, body, status, words):
    response = httpx.post(f"{server.url}{path}", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    for word in words:
        assert word.lower() in error["message"].lower(), error["message"]


def test_prompt_over_the_context_limit_names_the_limit(server):
    response = httpx.post(f"{server.url}/v1/completions", json={"prompt": "fox " * 1000, "max_tokens": 1})
    assert response.status_code == 400
    assert "context limit is 512" in response.json()["error"]["message"]


def test_wrong_method_is_a_4xx(server):
    response = httpx.get(f"{server.url}/v1/completions")
    assert response.status_code == 405
    assert "error" in response.json()


def test_the_engine_still_serves_after_bad_input(server):
    response = httpx.post(f"{server.url}/v1/completions", json={"prompt": "hi", "max_tokens": 3}, timeout=30)
    assert response.status_code == 200
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"


@pytest.fixture(scope="module")
def keyed_server(start_server, tiny_config):
    return start_server(tiny_config(max_model_len=128), api_key="sekret")


def test_api_key_guards_v1_only(keyed_server):
    url = keyed_server.url
    body = {"prompt": "hi", "max_tokens": 2}
    missing = httpx.post(f"{url}/v1/completions", json=body)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
    wrong = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    right = httpx.post(
        f"{url}/v1/completions", json=body, headers={"Authorization": "Bearer sekret"}, timeout=30
    )
    assert right.status_code == 200
    for open_path in ("/health", "/ready", "/metrics"):
        assert httpx.get(f"{url}{open_path}").status_code == 200
