"""SIGTERM on a real `mili serve` process: /ready 503 and new calls shed while in-flight ones drain (or
are aborted at the deadline), then exit 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from mili_testing import answers_ok, fail_if_exited, free_port


@pytest.fixture
def serve(tiny_qwen3_dir: Path, tmp_path: Path, poll):
    """``serve(*extra_flags)``: a `mili serve` subprocess on the tiny model, ready; killed at teardown."""
    processes = []

    def start(*flags: str) -> tuple[subprocess.Popen, str]:
        port = free_port()
        log = open(tmp_path / f"serve-{port}.log", "wb")  # noqa: SIM115 (closed with the process)
        command = [sys.executable, "-m", "mili.worker.cli", "serve", "--model", str(tiny_qwen3_dir)]
        command += ["--served-name", "tiny", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
        command += ["--max-model-len", "256", *flags]
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if k != "MILI_API_KEY"},
        )
        processes.append((process, log))
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            fail_if_exited(process, "mili serve", tmp_path / f"serve-{port}.log")
            return answers_ok(f"{url}/ready")

        poll(ready, 120, "mili serve became ready", interval=0.2)
        return process, url

    yield start
    for process, log in processes:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()


class StreamReader(threading.Thread):
    """Streams one long completion, recording its events; ``first_token`` is set at the first text."""

    def __init__(self, url: str, max_tokens: int, n: int = 1) -> None:
        super().__init__(daemon=True)
        self.body = {
            "prompt": "Blocks", "max_tokens": max_tokens, "n": n, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True},
        }  # fmt: skip
        self.url = url
        self.first_token = threading.Event()
        self.events: list[str] = []
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            with httpx.stream("POST", f"{self.url}/v1/completions", json=self.body, timeout=150) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        self.events.append(line[6:])
                        self.first_token.set()
        except httpx.HTTPError as error:
            self.error = error
        finally:
            self.first_token.set()

    def finish_reasons(self) -> set[str]:
        chunks = [json.loads(event) for event in self.events if event != "[DONE]"]
        return {
            choice["finish_reason"]
            for chunk in chunks
            for choice in chunk["choices"]
            if choice["finish_reason"]
        }


def refuses_connections(url: str) -> bool:
    try:
        httpx.get(f"{url}/health", timeout=1)
    except httpx.TransportError:
        return True
    return False


def test_sigterm_drains_in_flight_requests_then_exits_0(serve, poll):
    process, url = serve("--shutdown-timeout", "60")
    stream = StreamReader(url, max_tokens=60)
    stream.start()
    assert stream.first_token.wait(60)
    process.send_signal(signal.SIGTERM)
    # Draining keeps the socket open (so /ready can answer 503) until the stream has ended.
    poll(lambda: refuses_connections(url), 60, "the server stopped accepting connections once drained")
    assert process.wait(timeout=60) == 0
    stream.join(timeout=10)
    assert stream.error is None
    assert stream.events[-1] == "[DONE]"
    assert stream.finish_reasons() == {"length"}  # it ran to the end
    usage = json.loads(stream.events[-2])["usage"]
    assert usage["completion_tokens"] == 60


def test_sigterm_past_the_deadline_aborts_in_flight_work_and_exits_0(serve):
    process, url = serve("--shutdown-timeout", "0.05")
    stream = StreamReader(url, max_tokens=240, n=16)  # 240 steps of 16 sequences: far more than 50 ms
    stream.start()
    assert stream.first_token.wait(60)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    stream.join(timeout=10)
    assert "length" not in stream.finish_reasons()  # cut short: aborted, or the connection closed


def test_sigterm_turns_ready_503_and_sheds_new_calls_while_in_flight_ones_finish(serve, poll):
    process, url = serve("--shutdown-timeout", "120")
    stream = StreamReader(url, max_tokens=160, n=4)  # a few seconds of work to drain
    stream.start()
    assert stream.first_token.wait(60)
    assert httpx.get(f"{url}/ready", timeout=5).status_code == 200
    process.send_signal(signal.SIGTERM)
    poll(lambda: httpx.get(f"{url}/ready", timeout=5).status_code == 503, 10, "/ready turned 503 on SIGTERM")
    assert httpx.get(f"{url}/ready", timeout=5).json()["error"]["code"] == "draining"
    refused = httpx.post(f"{url}/v1/completions", json={"prompt": "late", "max_tokens": 2}, timeout=10)
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    assert refused.json()["error"]["code"] == "draining"
    assert httpx.get(f"{url}/health", timeout=5).status_code == 200  # draining is not dying
    assert stream.is_alive(), "the in-flight stream should still be running while we probed"
    assert process.wait(timeout=150) == 0
    stream.join(timeout=10)
    assert stream.error is None and stream.finish_reasons() == {"length"}
