"""AsyncEngine: the engine thread behind asyncio streams; it survives a failing step. OutputStream:
deltas a reader has not read are added up, not queued."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from mili.worker.config import EngineConfig
from mili.worker.engine.llm_engine import RequestRejected
from mili.worker.engine.outputs import RequestDelta, RequestMetrics, SequenceDelta
from mili.worker.metrics import WorkerMetrics
from mili.worker.sampling_params import SamplingParams
from mili.worker.server.async_engine import AsyncEngine, OutputStream, RequestFailed

GREEDY = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)


async def started_engine(model_dir: Path) -> AsyncEngine:
    engine = AsyncEngine(
        EngineConfig(model=str(model_dir), device="cpu", max_model_len=128), WorkerMetrics("t")
    )
    engine.start()
    assert await asyncio.to_thread(engine.wait_loaded, 120)
    assert engine.ready, engine.unavailable_reason()
    return engine


async def add(engine: AsyncEngine, request_id: str, prompt: list[int], params=GREEDY) -> OutputStream:
    stream = OutputStream(1, params.n)
    await engine.add_request(request_id, prompt, params, time.monotonic(), stream)
    return stream


async def generate(engine: AsyncEngine, request_id: str, prompt: list[int], params=GREEDY):
    """Every read of the request's stream: a list of choice deltas each."""
    return [deltas async for deltas in await add(engine, request_id, prompt, params)]


async def test_streams_deliver_deltas_that_add_up_and_end_with_the_finish(tiny_qwen3_dir):
    engine = await started_engine(tiny_qwen3_dir)
    try:
        reads = await generate(engine, "a", [5, 6, 7])
        deltas = [delta for read in reads for delta in read]
        assert sum(len(delta.token_ids) for delta in deltas) == 6
        assert [delta.finish_reason for delta in deltas][-1] == "length"
        assert all(delta.finish_reason is None for delta in deltas[:-1])
        with pytest.raises(RequestRejected, match="context limit"):
            await generate(engine, "b", list(range(1, 200)))
    finally:
        await engine.stop()
    assert not engine.alive


async def test_a_failing_step_fails_its_requests_and_the_loop_goes_on(tiny_qwen3_dir):
    engine = await started_engine(tiny_qwen3_dir)
    runner = engine.engine.runner
    real_run = runner.run
    calls = {"n": 0}

    def fail_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected kernel failure")
        return real_run(*args, **kwargs)

    runner.run = fail_once
    try:
        with pytest.raises(RequestFailed):
            await generate(engine, "doomed", [5, 6, 7])
        assert engine.alive
        reads = await generate(engine, "fine", [5, 6, 7])
        assert reads[-1][-1].finish_reason == "length"
        assert all(count == 0 for count in engine.engine.block_manager.ref_counts)
        assert engine.metrics.requests_total("error") == 1
    finally:
        await engine.stop()


async def test_abort_frees_the_blocks_of_a_running_request(tiny_qwen3_dir):
    engine = await started_engine(tiny_qwen3_dir)
    try:
        params = SamplingParams(temperature=0.0, max_tokens=100, ignore_eos=True)
        stream = await add(engine, "long", [5, 6, 7], params)
        await stream.__anext__()
        engine.abort("long")
        deadline = time.monotonic() + 10
        while engine.engine.has_unfinished_requests() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert not engine.engine.has_unfinished_requests()
        assert engine.metrics.requests_total("abort") == 1
    finally:
        await engine.stop()


async def test_a_model_that_fails_to_load_reports_why(tmp_path):
    engine = AsyncEngine(EngineConfig(model=str(tmp_path / "missing"), device="cpu"), WorkerMetrics("t"))
    engine.start()
    assert await asyncio.to_thread(engine.wait_loaded, 60)
    assert not engine.alive and not engine.ready
    assert "failed to load" in engine.unavailable_reason()


async def test_an_unread_stream_adds_its_deltas_up_instead_of_queueing_them():
    stream = OutputStream(num_requests=2, n=2)
    metrics = RequestMetrics(arrival_time=0.0)
    for step in range(1000):
        last = step == 999
        for prompt in range(2):
            sequences = [
                SequenceDelta(i, [step], f"{step},", [], "length" if last else None) for i in range(2)
            ]
            stream.put(prompt, RequestDelta(f"r{prompt}", 3, sequences, finished=last, metrics=metrics))
    (read,) = [deltas async for deltas in stream]  # everything in one read, one delta per choice
    assert [delta.index for delta in read] == [0, 1, 2, 3]
    expected_text = "".join(f"{step}," for step in range(1000))
    assert all(delta.text == expected_text and delta.token_ids == list(range(1000)) for delta in read)
    assert all(delta.finish_reason == "length" for delta in read)
    assert (stream.num_prompt_tokens, stream.num_completion_tokens) == (6, 4000)


async def test_tokens_without_text_wait_for_their_text():
    stream = OutputStream(num_requests=1, n=1)
    metrics = RequestMetrics(arrival_time=0.0)
    stream.put(0, RequestDelta("r", 1, [SequenceDelta(0, [1], "", [])], finished=False, metrics=metrics))
    stream.put(0, RequestDelta("r", 1, [SequenceDelta(0, [2], "🤖", [])], finished=False, metrics=metrics))
    (delta,) = await stream.__anext__()
    assert (delta.token_ids, delta.text) == ([1, 2], "🤖")
