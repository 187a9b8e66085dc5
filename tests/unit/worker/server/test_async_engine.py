"""AsyncEngine: the engine thread behind asyncio streams; it survives a failing step."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from mili.worker.config import EngineConfig
from mili.worker.engine.llm_engine import RequestRejected
from mili.worker.metrics import WorkerMetrics
from mili.worker.sampling_params import SamplingParams
from mili.worker.server.async_engine import AsyncEngine, RequestFailed

GREEDY = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)


async def started_engine(model_dir: Path) -> AsyncEngine:
    engine = AsyncEngine(
        EngineConfig(model=str(model_dir), device="cpu", max_model_len=128), WorkerMetrics("t")
    )
    engine.start()
    assert await asyncio.to_thread(engine.wait_loaded, 120)
    assert engine.ready, engine.unavailable_reason()
    return engine


async def generate(engine: AsyncEngine, request_id: str, prompt: list[int], params=GREEDY):
    outputs = [
        output async for output in await engine.add_request(request_id, prompt, params, time.monotonic())
    ]
    return outputs


async def test_streams_grow_and_end_with_the_finished_output(tiny_qwen3_dir):
    engine = await started_engine(tiny_qwen3_dir)
    try:
        outputs = await generate(engine, "a", [5, 6, 7])
        assert outputs[-1].finished and len(outputs[-1].outputs[0].token_ids) == 6
        assert all(not output.finished for output in outputs[:-1])
        lengths = [len(output.outputs[0].token_ids) for output in outputs]
        assert lengths == sorted(lengths)
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
        outputs = await generate(engine, "fine", [5, 6, 7])
        assert outputs[-1].finished and outputs[-1].outputs[0].finish_reason == "length"
        assert all(count == 0 for count in engine.engine.block_manager.ref_counts)
        assert engine.metrics.requests_total("error") == 1
    finally:
        await engine.stop()


async def test_abort_frees_the_blocks_of_a_running_request(tiny_qwen3_dir):
    engine = await started_engine(tiny_qwen3_dir)
    try:
        params = SamplingParams(temperature=0.0, max_tokens=100, ignore_eos=True)
        stream = await engine.add_request("long", [5, 6, 7], params, time.monotonic())
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
