"""The engine in its own thread, fed by asyncio handlers.

``LLMEngine`` is synchronous and not thread-safe, so exactly one thread owns it: it loads the weights,
runs a warm-up generation, then loops: take commands (add, abort, stop), run one step, hand the deltas
to the event loop, update the metrics. Handlers never touch the engine: they enqueue a command and
read an ``OutputStream``. The loop survives anything: a failing step fails only the requests of its
batch (they get an error, their blocks are released) and the loop goes on; ``health_problem`` says
when it keeps failing or stops making progress.
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
from mili.worker.engine.llm_engine import LLMEngine, RequestRejected, StepFailed
from mili.worker.engine.outputs import OutputAccumulator, RequestDelta, SequenceDelta
from mili.worker.engine.sequence import TokenLogprobs
from mili.worker.metrics import WorkerMetrics
from mili.worker.sampling_params import SamplingParams
from mili.worker.server.limits import HealthLimits
from mili.worker.structured.compiler import GrammarCompilerService
from mili.worker.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

IDLE_WAIT_S = 0.5  # how long an idle loop blocks on its command queue before looking around again
WARMUP_REQUEST_ID = "mili-warmup"


class EngineUnavailable(RuntimeError):
    """The engine cannot take requests: still loading, failed to load, or stopped."""


class RequestFailed(RuntimeError):
    """The engine failed while running this request; the request was aborted."""


class QueueFull(RuntimeError):
    """Admitting more would pass ``max_queued_requests`` (the argument); retry later or elsewhere."""


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


class OutputStream:
    """The deltas of one API call's engine requests (one per prompt, ``n`` sequences each), read as
    ``async for deltas in stream``; sequence ``i`` of prompt ``p`` is choice ``p * n + i``.

    Deltas that arrive while the reader is busy (or not reading at all) are added up per choice, never
    queued: an unread stream holds at most its output once. A read returns the choices that gained
    text or finished (tokens without text yet wait for their text). It ends after every choice
    finished; an engine failure raises ``RequestFailed``.
    """

    def __init__(self, num_requests: int, n: int) -> None:
        self.n = n
        self.num_prompt_tokens = 0
        self.num_completion_tokens = 0
        self._unfinished = num_requests
        self.prompt_logprobs: dict[int, list[TokenLogprobs | None]] = {}  # per prompt index, when asked
        self._pending: dict[int, OutputAccumulator] = {}
        self._error: RequestFailed | None = None
        self._wakeup = asyncio.Event()

    @property
    def finished(self) -> bool:
        return self._unfinished == 0

    def put(self, prompt_index: int, delta: RequestDelta) -> None:
        if delta.error is not None:
            self._error = RequestFailed(delta.error)
        if delta.prompt_logprobs is not None:  # the engine sends them before any of the prompt's text
            self.prompt_logprobs[prompt_index] = delta.prompt_logprobs
        for sequence in delta.sequences:
            choice = prompt_index * self.n + sequence.index
            pending = self._pending.get(choice)
            if pending is None:
                pending = self._pending[choice] = OutputAccumulator(choice)
            pending.add(sequence)
            self.num_completion_tokens += len(sequence.token_ids)
        if delta.finished:
            self.num_prompt_tokens += delta.num_prompt_tokens
            self._unfinished -= 1
        self._wakeup.set()

    def __aiter__(self) -> OutputStream:
        return self

    async def __anext__(self) -> list[SequenceDelta]:
        while True:
            if self._error is not None:
                self._pending.clear()
                raise self._error
            ready = [
                choice
                for choice, pending in self._pending.items()
                if pending.has_text or pending.finish_reason
            ]
            if ready:
                return [self._pending.pop(choice).as_delta() for choice in sorted(ready)]
            if self.finished:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()


class Admission:
    """Requests a handler is about to add, counted as queued from admission until the engine counts
    them itself; ``release()`` once they were added (or refused)."""

    def __init__(self, engine: AsyncEngine, count: int) -> None:
        self._engine = engine
        self._count = count
        engine._admitting += count

    def release(self) -> None:
        self._engine._admitting -= self._count
        self._count = 0


class AsyncEngine:
    """Owns the engine thread; the asyncio side of the server talks only to this."""

    def __init__(
        self,
        config: EngineConfig,
        metrics: WorkerMetrics,
        warm_up: bool = True,
        max_queued_requests: int | None = None,
        health_limits: HealthLimits | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.warm_up = warm_up
        self.max_queued_requests = max_queued_requests
        self.health_limits = health_limits or HealthLimits()
        self.engine: LLMEngine | None = None
        self.load_error: str | None = None
        self.last_iteration = time.monotonic()
        self.consecutive_failed_steps = 0
        self.num_waiting_requests = 0  # written by the engine thread: its scheduler's waiting requests
        self.num_running_seqs = 0  # written by the engine thread: sequences in the running batch
        self._has_work = False  # written by the engine thread before each step
        self._admitting = 0  # requests admitted by handlers and not yet counted by the engine
        self._ready = threading.Event()
        self._finished_loading = threading.Event()
        self._commands: queue.Queue = queue.Queue()
        self._streams: dict[str, tuple[OutputStream, int]] = {}  # touched only on the event loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="mili-engine", daemon=True)
        if max_queued_requests is not None:
            metrics.max_queued_requests.set(max_queued_requests)

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

    def health_problem(self) -> str | None:
        """Why the engine is not healthy (dead, failing every step, or stuck), or None when it is."""
        if not self.alive:
            return self.unavailable_reason()
        limits = self.health_limits
        if self.consecutive_failed_steps >= limits.max_failed_steps:
            return f"the last {self.consecutive_failed_steps} engine steps failed"
        stalled_for = time.monotonic() - self.last_iteration
        if self._ready.is_set() and self._has_work and stalled_for > limits.stall_timeout_s:
            return f"no engine step finished for {stalled_for:.0f} s while requests are pending"
        return None

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

    @property
    def grammars(self) -> GrammarCompilerService:
        """The engine's grammar compiler (thread-safe): handlers compile before they add a request."""
        return self._loaded_engine().structured.compiler

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
    @property
    def num_queued_requests(self) -> int:
        """Requests beyond the running batch's places (``max_num_seqs``): of everything in the
        engine or on its way there (admitted by handlers), what the batch cannot take now."""
        in_system = self.num_running_seqs + self.num_waiting_requests + self._admitting
        return max(0, in_system - self.config.max_num_seqs)

    @property
    def queue_is_full(self) -> bool:
        limit = self.max_queued_requests
        return limit is not None and self.num_queued_requests >= limit

    def admit(self, count: int) -> Admission:
        """Count ``count`` new requests as queued, or raise ``QueueFull`` if that passes the limit.
        Admitted requests are never dropped for lack of room later."""
        self._loaded_engine()
        limit = self.max_queued_requests
        if limit is not None and self.num_queued_requests + count > limit:
            raise QueueFull(limit)
        return Admission(self, count)

    async def add_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        arrival_time: float,
        stream: OutputStream,
        prompt_index: int = 0,
    ) -> None:
        """Queue a request whose deltas go to ``stream`` (as prompt ``prompt_index``); returns once
        the engine accepted it. Raises ``RequestRejected`` (a ValueError saying why) when it refuses."""
        self._loaded_engine()
        self._streams[request_id] = (stream, prompt_index)
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
                self._has_work = running and engine.has_unfinished_requests()
                if self._has_work:
                    self._step(engine)
                stats = engine.stats()
                self.num_waiting_requests, self.num_running_seqs = (
                    engine.num_waiting_requests,
                    stats.num_running,
                )
                self.metrics.observe_stats(stats)
            except Exception:
                self.consecutive_failed_steps += 1
                logger.exception("engine loop iteration failed; the loop continues")
            self.last_iteration = time.monotonic()
        for request_id in list(engine.requests):
            self._abort(engine, request_id)
        self._has_work = False
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
        self.num_waiting_requests += 1  # counted before the handler stops counting it (no gap)
        self._call_soon(_settle, command.accepted, None)

    def _abort(self, engine: LLMEngine, request_id: str, notify: bool = True) -> None:
        delta = engine.abort_request(request_id)
        if delta is None:
            return
        self.metrics.observe_delta(delta)
        logger.info("request %s ended: abort", request_id)
        if notify:
            self._deliver([delta])

    def _step(self, engine: LLMEngine) -> None:
        try:
            deltas = engine.step()
        except StepFailed as failure:
            self.consecutive_failed_steps += 1
            logger.exception("engine step failed; failed the %d request(s) of its batch", len(failure.deltas))
            deltas = failure.deltas
        except Exception as error:  # a bug outside the model run: fail what was running, go on
            self.consecutive_failed_steps += 1
            running = engine.running_request_ids() or set(engine.requests)
            logger.exception("engine step failed; failing the %d request(s) it was running", len(running))
            message = f"the engine failed while running this request: {type(error).__name__}"
            deltas = [d for rid in running if (d := engine.fail_request(rid, message)) is not None]
        else:
            self.consecutive_failed_steps = 0
        for delta in deltas:
            if delta.error is not None:
                logger.warning("request %s failed: %s", delta.request_id, delta.error)
            self.metrics.observe_delta(delta)
        self._deliver(deltas)

    def _deliver(self, deltas: list[RequestDelta]) -> None:
        if deltas:
            self._call_soon(self._dispatch, deltas)

    def _call_soon(self, callback, *args) -> None:
        with contextlib.suppress(RuntimeError):  # a closed event loop: nobody is listening any more
            self._loop.call_soon_threadsafe(callback, *args)

    # --- back on the event loop -------------------------------------------------------------------
    def _dispatch(self, deltas: list[RequestDelta]) -> None:
        for delta in deltas:
            entry = self._streams.get(delta.request_id)
            if entry is None:
                continue
            stream, prompt_index = entry
            stream.put(prompt_index, delta)
            if delta.finished:
                del self._streams[delta.request_id]


def _settle(future: asyncio.Future, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
