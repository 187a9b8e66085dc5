"""Faults inside the engine: they fail only the requests they touch, and /health tells the truth.

Faults are injected into the running server's engine (a sequence whose token handling raises, a
model run that raises or never returns); everything else is the real server.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from mili.worker.engine.request import Request
from mili.worker.server.limits import HealthLimits, ServerLimits

DOOMED_PROMPT = [7, 7, 7, 7, 7, 7]


@pytest.fixture(scope="module")
def fragile_server(start_server, tiny_config):
    """Unhealthy after 2 failed steps in a row, or 1 s without a finished step while work is pending."""
    limits = ServerLimits(health=HealthLimits(max_failed_steps=2, stall_timeout_s=1.0))
    return start_server(tiny_config(max_model_len=256), limits=limits)


def complete(url: str, prompt, max_tokens: int, **extra) -> httpx.Response:
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, **extra}
    return httpx.post(f"{url}/v1/completions", json=body, timeout=120)


def stream_events(url: str, prompt, max_tokens: int) -> list[str]:
    body = {"prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        return [line[6:] for line in response.iter_lines() if line.startswith("data: ")]


def health(url: str) -> httpx.Response:
    return httpx.get(f"{url}/health", timeout=5)


def test_a_sequence_whose_handling_raises_fails_only_its_request(fragile_server, monkeypatch):
    url = fragile_server.url
    errors_before = fragile_server.sample("mili_requests_total", finish_reason="error")
    take_token = Request.append_token

    def fail_on_the_doomed(self, seq, *args, **kwargs):
        if self.prompt_token_ids == DOOMED_PROMPT and seq.num_output_tokens >= 3:
            raise RuntimeError("injected: detokenizing this sequence failed")
        return take_token(self, seq, *args, **kwargs)

    monkeypatch.setattr(Request, "append_token", fail_on_the_doomed)
    with ThreadPoolExecutor(3) as pool:
        bystander = pool.submit(stream_events, url, [5, 6, 7], 60)
        doomed = pool.submit(complete, url, DOOMED_PROMPT, 30)
        doomed_stream = pool.submit(stream_events, url, DOOMED_PROMPT, 30)
        failed, failed_events, events = doomed.result(), doomed_stream.result(), bystander.result()
    assert failed.status_code == 500
    assert failed.json()["error"]["code"] == "engine_error"
    assert "injected: detokenizing this sequence failed" in failed.json()["error"]["message"]
    assert any('"engine_error"' in event for event in failed_events) and failed_events[-1] == "[DONE]"
    assert events[-1] == "[DONE]" and '"finish_reason":"length"' in events[-2]
    assert health(url).status_code == 200  # one request failing is not the engine failing
    assert fragile_server.sample("mili_requests_total", finish_reason="error") == errors_before + 2
    assert complete(url, DOOMED_PROMPT[:2], 4).status_code == 200


def test_failed_steps_in_a_row_turn_health_503_until_a_step_succeeds(fragile_server, monkeypatch):
    url, runner = fragile_server.url, fragile_server.engine.engine.runner

    def broken_model(*args, **kwargs):
        raise RuntimeError("injected: the model run failed")

    monkeypatch.setattr(runner, "run", broken_model)
    for _ in range(2):
        response = complete(url, [5, 6, 7], 4)
        assert response.status_code == 500 and "the model run failed" in response.json()["error"]["message"]
    unhealthy = health(url)
    assert unhealthy.status_code == 503 and "2 engine steps failed" in unhealthy.json()["error"]["message"]
    monkeypatch.undo()
    assert complete(url, [5, 6, 7], 4).status_code == 200
    assert health(url).status_code == 200


def test_an_engine_that_hangs_turns_health_503_and_back_when_it_moves(fragile_server, monkeypatch, poll):
    url, runner = fragile_server.url, fragile_server.engine.engine.runner
    run_model, release = runner.run, threading.Event()

    def hanging_model(*args, **kwargs):
        release.wait(60)
        return run_model(*args, **kwargs)

    monkeypatch.setattr(runner, "run", hanging_model)
    with ThreadPoolExecutor(1) as pool:
        stuck = pool.submit(complete, url, [5, 6, 7], 4)
        try:
            poll(lambda: health(url).status_code == 503, 20, "/health turned 503 while the engine hung")
            assert "no engine step finished" in health(url).json()["error"]["message"]
        finally:
            release.set()
        assert stuck.result().status_code == 200
    poll(lambda: health(url).status_code == 200, 10, "/health recovered once the engine moved")
