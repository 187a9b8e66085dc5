"""The engine in its own thread, fed by asyncio handlers.

``LLMEngine`` is synchronous and not thread-safe, so exactly one thread owns it: it loads the weights,
runs a warm-up generation, then loops: take commands (add, abort, stop), run one step, hand the outputs
to the event loop, update the metrics. Handlers never touch the engine: they enqueue a command and
await a per-request ``RequestStream``. The loop survives anything: a failing step fails only the
requests that were running (they get an error, their blocks are released) and the loop goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass

from mili.worker.config import EngineConfig
from mili.worker.engine.llm_engine import LLMEngine, RequestRejected
from mili.worker.engine.request import RequestOutput
from mili.worker.metrics import WorkerMetrics
from mili.worker.sampling_params import SamplingParams
from mili.worker.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

IDLE_WAIT_S = 0.5  # how long an idle loop blocks on its command queue before looking around again
WARMUP_REQUEST_ID = "mili-warmup"


class EngineUnavailable(RuntimeError):
    """The engine cannot take requests: still loading, failed to load, or stopped."""


class RequestFailed(RuntimeError):
    """The engine failed while running this request; the request was aborted."""


@dataclass
class _Add:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    arrival_time: float
    accepted: asyncio.Future


@dataclass
class _Abort:
    request_id: str


_STOP = object()


class RequestStream:
    """One request's outputs, in order, as ``async for output in stream``.

    Outputs are cumulative (text, token ids and logprobs so far), so a reader that falls behind skips
    to the newest one and loses nothing. Ends after the finished output; an engine failure raises
    ``RequestFailed``.
    """

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self._queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        self._done = False

    def put(self, item: RequestOutput | BaseException) -> None:
        self._queue.put_nowait(item)

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self._done:
            raise StopAsyncIteration
        item = await self._queue.get()
        while not isinstance(item, BaseException) and not item.finished and not self._queue.empty():
            item = self._queue.get_nowait()
        if isinstance(item, BaseException):
            self._done = True
            raise item
        self._done = item.finished
        return item


class AsyncEngine:
    """Owns the engine thread; the asyncio side of the server talks only to this."""

    def __init__(self, config: EngineConfig, metrics: WorkerMetrics, warm_up: bool = True) -> None:
        self.config = config
        self.metrics = metrics
        self.warm_up = warm_up
        self.engine: LLMEngine | None = None
        self.load_error: str | None = None
        self.last_iteration = time.monotonic()
        self._ready = threading.Event()
        self._finished_loading = threading.Event()
        self._commands: queue.Queue = queue.Queue()
        self._streams: dict[str, RequestStream] = {}  # touched only on the event loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="mili-engine", daemon=True)

    # --- lifecycle (event loop side) --------------------------------------------------------------
    def start(self) -> None:
        """Start loading in the engine thread; returns at once (``ready`` tells when it can serve)."""
        self._loop = asyncio.get_running_loop()
        self._thread.start()

    @property
    def ready(self) -> bool:
        """Weights loaded, warm-up done, loop running."""
        return self._ready.is_set() and self._thread.is_alive()

    @property
    def alive(self) -> bool:
        """The engine thread is loading or looping (not failed, not stopped)."""
        return self._thread.is_alive() and self.load_error is None

    def wait_loaded(self, timeout: float | None = None) -> bool:
        """Block until loading ended (ready or failed); True when it ended within ``timeout``."""
        return self._finished_loading.wait(timeout)

    async def stop(self, timeout: float = 10.0) -> None:
        """Abort what is left, stop the loop and wait for the thread (at most ``timeout`` seconds)."""
        self._commands.put(_STOP)
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join, timeout)

    @property
    def tokenizer(self) -> Tokenizer:
        return self._loaded_engine().tokenizer

    @property
    def max_model_len(self) -> int:
        return self._loaded_engine().max_model_len

    def _loaded_engine(self) -> LLMEngine:
        if self.engine is None or not self.ready:
            raise EngineUnavailable(self.unavailable_reason())
        return self.engine

    def unavailable_reason(self) -> str:
        if self.load_error is not None:
            return f"the model failed to load: {self.load_error}"
        if not self._thread.is_alive() and self._ready.is_set():
            return "the engine has stopped"
        return "the model is still loading; retry when /ready answers 200"

    # --- requests (event loop side) ---------------------------------------------------------------
    async def add_request(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, arrival_time: float
    ) -> RequestStream:
        """Queue a request; returns its stream once the engine accepted it.

        Raises ``RequestRejected`` (a ValueError saying why) when the engine refuses it.
        """
        self._loaded_engine()
        stream = RequestStream(request_id)
        self._streams[request_id] = stream
        accepted = asyncio.get_running_loop().create_future()
        self._commands.put(_Add(request_id, prompt_token_ids, params, arrival_time, accepted))
        try:
            await accepted
        except RequestRejected:
            self._streams.pop(request_id, None)
            raise
        except BaseException:
            self.abort(request_id)  # cancelled while queued: the engine may hold it by now
            raise
        return stream

    def abort(self, request_id: str) -> None:
        """Stop a request and free its blocks (safe to call for finished or unknown ids)."""
        if self._streams.pop(request_id, None) is not None:
            self._commands.put(_Abort(request_id))

    # --- the engine thread ------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self.engine = LLMEngine(self.config)
            kernels = self.engine.runner.kernel_choice
            self.metrics.set_kernel_backend(kernels.backend.name, kernels.reason)
            if self.warm_up:
                self._warm_up(self.engine)
            self.metrics.set_baseline(self.engine.stats())
        except Exception as error:
            logger.exception("loading the engine failed")
            self.load_error = f"{type(error).__name__}: {error}"
            self._finished_loading.set()
            return
        self._ready.set()
        self._finished_loading.set()
        logger.info("engine ready: %s, max_model_len %d", self.config.model, self.engine.max_model_len)
        self._loop_until_stopped(self.engine)

    @staticmethod
    def _warm_up(engine: LLMEngine) -> None:
        """One short greedy generation, so first-request costs (allocations, compilation) are paid now."""
        prompt = engine.tokenizer.encode("Hello") or [0]
        prompt = prompt[: max(1, engine.max_model_len - 2)]
        max_tokens = max(1, min(4, engine.max_model_len - len(prompt)))
        started = time.monotonic()
        try:
            engine.add_request(
                WARMUP_REQUEST_ID, prompt, SamplingParams(max_tokens=max_tokens, temperature=0.0)
            )
        except RequestRejected as error:
            logger.warning("skipping warm-up: %s", error)
            return
        while engine.has_unfinished_requests():
            engine.step()
        logger.info("warm-up generation took %.2f s", time.monotonic() - started)

    def _loop_until_stopped(self, engine: LLMEngine) -> None:
        running = True
        while running:
            try:
                running = self._take_commands(engine, block=not engine.has_unfinished_requests())
                if running and engine.has_unfinished_requests():
                    self._step(engine)
                self.metrics.observe_stats(engine.stats())
            except Exception:
                logger.exception("engine loop iteration failed; the loop continues")
            self.last_iteration = time.monotonic()
        for request_id in list(engine.requests):
            self._abort(engine, request_id)
        self.metrics.observe_stats(engine.stats())
        logger.info("engine loop stopped")

    def _take_commands(self, engine: LLMEngine, block: bool) -> bool:
        """Apply queued commands; False once told to stop."""
        commands = []
        try:
            if block:
                commands.append(self._commands.get(timeout=IDLE_WAIT_S))
            while True:
                commands.append(self._commands.get_nowait())
        except queue.Empty:
            pass
        for command in commands:
            if command is _STOP:
                return False
            if isinstance(command, _Add):
                self._add(engine, command)
            elif isinstance(command, _Abort):
                self._abort(engine, command.request_id, notify=False)
        return True

    def _add(self, engine: LLMEngine, command: _Add) -> None:
        try:
            engine.add_request(
                command.request_id, command.prompt_token_ids, command.params, command.arrival_time
            )
        except Exception as error:
            if not isinstance(error, ValueError):
                logger.exception("adding request %s failed", command.request_id)
                error = RequestRejected(
                    f"the engine could not take this request: {type(error).__name__}: {error}"
                )
            self._call_soon(_settle, command.accepted, error)
            return
        self._call_soon(_settle, command.accepted, None)

    def _abort(self, engine: LLMEngine, request_id: str, notify: bool = True, reason: str = "abort") -> None:
        output = engine.abort_request(request_id)
        if output is None:
            return
        self.metrics.observe_end(request_id, reason, output.metrics.arrival_time, time.monotonic())
        logger.info("request %s ended: %s", request_id, reason)
        if notify:
            self._deliver([(request_id, output)])

    def _step(self, engine: LLMEngine) -> None:
        try:
            outputs = engine.step()
        except Exception as error:
            running = engine.running_request_ids() or set(engine.requests)
            logger.exception("engine step failed; failing the %d request(s) it was running", len(running))
            failure = RequestFailed(f"the engine failed while running this request: {type(error).__name__}")
            for request_id in running:
                self._abort(engine, request_id, notify=False, reason="error")
            self._deliver([(request_id, failure) for request_id in running])
            return
        for output in outputs:
            self.metrics.observe_output(output)
        self._deliver([(output.request_id, output) for output in outputs])

    def _deliver(self, items: list[tuple[str, RequestOutput | BaseException]]) -> None:
        if items:
            self._call_soon(self._dispatch, items)

    def _call_soon(self, callback, *args) -> None:
        with contextlib.suppress(RuntimeError):  # a closed event loop: nobody is listening any more
            self._loop.call_soon_threadsafe(callback, *args)

    # --- back on the event loop -------------------------------------------------------------------
    def _dispatch(self, items: list[tuple[str, RequestOutput | BaseException]]) -> None:
        for request_id, item in items:
            stream = self._streams.get(request_id)
            if stream is None:
                continue
            stream.put(item)
            if isinstance(item, BaseException) or item.finished:
                del self._streams[request_id]


def _settle(future: asyncio.Future, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
