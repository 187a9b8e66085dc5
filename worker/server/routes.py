"""The HTTP routes: OpenAI's completions, chat completions and models, plus health, readiness, metrics.

A handler validates, tokenizes (in a worker thread), enqueues its requests on the engine and awaits
their streams; it never touches the engine itself. Whatever way a handler ends (finished, error,
client gone), the engine requests it started are aborted (a no-op for finished ones): by the
handler's ``finally``, or by a streaming response's ``on_close``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from mili.worker.engine.llm_engine import RequestRejected
from mili.worker.engine.outputs import CompletionOutput, SequenceDelta
from mili.worker.engine.sequence import TokenLogprobs
from mili.worker.metrics import CONTENT_TYPE_LATEST, WorkerMetrics
from mili.worker.sampling_params import SamplingParams
from mili.worker.server import inputs
from mili.worker.server.async_engine import (
    AsyncEngine,
    EngineUnavailable,
    OutputStream,
    QueueFull,
    RequestFailed,
)
from mili.worker.server.chat_choices import ChatOptions, ChoiceParser
from mili.worker.server.errors import APIError, JSONBody, dump_json, error_body, queue_full_error
from mili.worker.server.limits import RETRY_AFTER_S, ServerLimits
from mili.worker.server.outputs import LogprobFormatter, serialize_response, usage, whole_choices
from mili.worker.server.protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    CompletionRequest,
    DeltaMessage,
    ErrorResponse,
    ModelCard,
    ModelList,
    PromptLogprobs,
)
from mili.worker.server.sse import ClientDisconnected, EventStreamResponse, cancel_on_disconnect
from mili.worker.server.structured_request import (
    ToolPlan,
    grammar_param,
    structured_outputs_of,
    tool_plan,
)
from mili.worker.structured.compiler import GrammarError
from mili.worker.structured.spec import StructuredOutputsParams

DONE_EVENT = b"data: [DONE]\n\n"
DRAINING_MESSAGE = "the server is shutting down; send new requests to another replica"
ERROR_RESPONSES = {
    400: {"model": ErrorResponse, "description": "Invalid request"},
    401: {"model": ErrorResponse, "description": "Missing or wrong API key"},
    404: {"model": ErrorResponse, "description": "Unknown model"},
    413: {"model": ErrorResponse, "description": "Request body too large"},
    503: {"model": ErrorResponse, "description": "Not loaded yet, at capacity, or draining"},
}


@dataclass
class ServerState:
    """What the routes share: the engine, its metrics, the served name, the API key, the limits;
    and, once SIGTERM came, that the server is draining."""

    engine: AsyncEngine
    metrics: WorkerMetrics
    served_name: str
    api_key: str | None = None
    created: int = 0
    limits: ServerLimits = field(default_factory=ServerLimits)
    draining: bool = False
    calls_in_flight: int = 0  # /v1 calls being answered (counted by the request gate)
    chat: ChatOptions = field(default_factory=ChatOptions)  # tool-call and reasoning parsers


def _state(request: Request) -> ServerState:
    return request.app.state.mili


# --- open routes ------------------------------------------------------------------------------------
probes = APIRouter()


@probes.get("/health", summary="Liveness: the engine loop is alive, not failing, not stuck")
async def health(request: Request) -> Response:
    engine = _state(request).engine
    problem = engine.health_problem()
    if problem is None:
        return JSONBody({"status": "ok", "ready": engine.ready})
    return JSONBody(error_body(problem, 503, code="unhealthy"), status_code=503)


@probes.get("/ready", summary="Readiness: weights loaded, a warm-up generation ran, not draining")
async def ready(request: Request) -> Response:
    state = _state(request)
    if state.draining:
        return JSONBody(error_body(DRAINING_MESSAGE, 503, code="draining"), status_code=503)
    if state.engine.ready:
        return JSONBody({"status": "ready"})
    return JSONBody(error_body(state.engine.unavailable_reason(), 503), status_code=503)


@probes.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    return Response(_state(request).metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


# --- the OpenAI API ---------------------------------------------------------------------------------
openai_api = APIRouter(prefix="/v1", responses=ERROR_RESPONSES)


@openai_api.get("/models", response_model=ModelList)
async def list_models(request: Request) -> ModelList:
    return ModelList(data=[_model_card(_state(request))])


@openai_api.get("/models/{model_id:path}", response_model=ModelCard)
async def retrieve_model(model_id: str, request: Request) -> ModelCard:
    state = _state(request)
    _check_model(state, model_id)
    return _model_card(state)


def _model_card(state: ServerState) -> ModelCard:
    engine = state.engine
    max_model_len = engine.max_model_len if engine.ready else None
    return ModelCard(
        id=state.served_name, created=state.created, root=engine.config.model, max_model_len=max_model_len
    )


def _check_model(state: ServerState, model: str | None) -> None:
    if model is not None and model != state.served_name:
        raise APIError(
            f"The model '{model}' does not exist; this server serves '{state.served_name}'",
            404,
            param="model",
            code="model_not_found",
        )


@openai_api.post(
    "/completions",
    response_model=Completion,
    responses={200: {"content": {"text/event-stream": {}}, "description": "A completion, or SSE chunks"}},
)
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    state, arrival = _state(request), time.monotonic()
    _check_model(state, body.model)
    inputs.check_unsupported(body)
    tokenizer = _tokenizer(state)
    structured = structured_outputs_of(body)
    params = inputs.sampling_params(
        body,
        max_tokens=16 if body.max_tokens is None else body.max_tokens,
        logprobs=body.logprobs,
        structured=structured,
        prompt_logprobs=inputs.prompt_logprobs_of(body),
    )
    num_prompts = inputs.count_prompts(body.prompt, params.n)
    max_chars = inputs.max_prompt_chars(state.engine.max_model_len)
    await _compile_grammar(state, structured, grammar_param(body, None))
    call = _Call(state, f"cmpl-{uuid.uuid4().hex}", int(time.time()), LogprobFormatter(tokenizer))
    with _admitted(state, num_prompts):
        prompts = await run_in_threadpool(
            inputs.completion_prompts,
            tokenizer,
            body.prompt,
            max_chars,
            body.add_special_tokens is not False,
            body.truncate_prompt_tokens,
            body.truncation_side,
        )
        if body.echo:
            call.echoes = [tokenizer.decode(ids, skip_special_tokens=False) for ids in prompts]
            call.echoed_ids = prompts if body.logprobs is not None else None
        call.vllm_prompt_logprobs = body.prompt_logprobs is not None
        await call.start(prompts, params, arrival, prompt_param="prompt")
    if body.stream:
        include_usage = body.stream_options.include_usage if body.stream_options else None
        return EventStreamResponse(call.completion_events(include_usage), on_close=call.abort)
    return await call.respond(request, call.completion_response)


@openai_api.post(
    "/chat/completions",
    response_model=ChatCompletion,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "A chat completion, or SSE chunks"}
    },
)
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    state, arrival = _state(request), time.monotonic()
    _check_model(state, body.model)
    inputs.check_unsupported(body)
    tokenizer = _tokenizer(state)
    top_logprobs = body.top_logprobs or 0
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError("top_logprobs requires logprobs: true", param="top_logprobs")
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    plan = tool_plan(body, state.chat.tool_call_parser)
    structured = structured_outputs_of(body, plan)
    params = inputs.sampling_params(
        body,
        max_tokens=max_tokens,
        logprobs=top_logprobs if body.logprobs else None,
        structured=structured,
        prompt_logprobs=body.prompt_logprobs,
    )
    max_chars = inputs.max_prompt_chars(state.engine.max_model_len)
    await _compile_grammar(state, structured, grammar_param(body, plan))
    call = _Call(state, f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), LogprobFormatter(tokenizer))
    call.num_top_logprobs = top_logprobs
    call.tool_plan = plan
    call.vllm_prompt_logprobs = body.prompt_logprobs is not None
    call.include_reasoning = body.include_reasoning
    with _admitted(state, 1):
        prompt = await run_in_threadpool(inputs.chat_prompt, tokenizer, body, max_chars)
        await call.start([prompt], params, arrival, prompt_param="messages")
    if body.stream:
        include_usage = body.stream_options.include_usage if body.stream_options else None
        return EventStreamResponse(call.chat_events(include_usage), on_close=call.abort)
    return await call.respond(request, call.chat_response)


def _tokenizer(state: ServerState):
    if state.draining:
        raise APIError(DRAINING_MESSAGE, 503, code="draining", headers={"Retry-After": str(RETRY_AFTER_S)})
    try:
        return state.engine.tokenizer
    except EngineUnavailable as error:
        raise APIError(str(error), 503, code="model_not_ready") from error


async def _compile_grammar(
    state: ServerState, structured: StructuredOutputsParams | None, param: str
) -> None:
    """Compile the request's grammar before it is queued (off the event loop and the engine thread),
    so that a grammar that fails, or takes too long, is a 400 naming ``param``."""
    if structured is None:
        return
    try:
        compiler = state.engine.grammars
    except EngineUnavailable as error:
        raise APIError(str(error), 503, code="model_not_ready") from error
    spec = structured.spec(param)
    try:
        # shield: the compile is shared with other requests and must not be cancelled by this one
        await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(compiler.submit(spec))), compiler.timeout_s)
    except asyncio.TimeoutError as error:
        raise APIError(
            f"{param} did not compile within {compiler.timeout_s:g} s; simplify the schema or grammar",
            param=param,
        ) from error
    except GrammarError as error:
        raise APIError(f"{param} cannot be compiled: {error.problem}", param=param) from error


@contextlib.contextmanager
def _admitted(state: ServerState, num_requests: int) -> Iterator[None]:
    """Count a call's requests as queued while it tokenizes and adds them; 503 when the queue is full."""
    try:
        admission = state.engine.admit(num_requests)
    except QueueFull as error:
        raise queue_full_error(state.engine.max_queued_requests) from error
    except EngineUnavailable as error:
        raise APIError(str(error), 503, code="model_not_ready") from error
    try:
        yield
    finally:
        admission.release()


class _Call:
    """One API call: its engine requests (one per prompt), their stream, and the response."""

    def __init__(self, state: ServerState, call_id: str, created: int, formatter: LogprobFormatter) -> None:
        self.state = state
        self.id = call_id
        self.created = created
        self.formatter = formatter
        self.num_top_logprobs = 0
        self.tool_plan: ToolPlan | None = None
        self.echoes: list[str] | None = None  # completions with echo: each prompt's text
        self.echoed_ids: list[list[int]] | None = None  # echo with logprobs: each prompt's token ids
        self.vllm_prompt_logprobs = False  # vLLM's prompt_logprobs field was set
        self.include_reasoning = True  # chat: vLLM's include_reasoning
        self.request_ids: list[str] = []
        self.stream: OutputStream | None = None

    @property
    def model(self) -> str:
        return self.state.served_name

    async def start(
        self, prompts: list[list[int]], params: SamplingParams, arrival: float, prompt_param: str
    ) -> None:
        """Enqueue one engine request per prompt; a refusal aborts the others and answers 400."""
        engine = self.state.engine
        self.stream = OutputStream(len(prompts), params.n)
        self.request_ids = [self.id if len(prompts) == 1 else f"{self.id}-{i}" for i in range(len(prompts))]
        results = await asyncio.gather(
            *(
                engine.add_request(rid, ids, params, arrival, self.stream, index)
                for index, (rid, ids) in enumerate(zip(self.request_ids, prompts, strict=True))
            ),
            return_exceptions=True,
        )
        failures = [result for result in results if isinstance(result, BaseException)]
        if failures:
            self.abort()
            error = failures[0]
            if isinstance(error, RequestRejected):
                raise APIError(str(error), param=error.param or prompt_param) from error
            if isinstance(error, EngineUnavailable):
                raise APIError(str(error), 503, code="model_not_ready") from error
            raise error

    def abort(self) -> None:
        for request_id in self.request_ids:
            self.state.engine.abort(request_id)

    async def respond(self, request: Request, build) -> Response:
        """Wait for every request to finish (aborting them if the client leaves), then build and
        serialize the body in a worker thread: a large one must not hold up the event loop."""
        try:
            choices = await cancel_on_disconnect(request, whole_choices(self.stream))
        except ClientDisconnected:
            return Response(status_code=499)
        except RequestFailed as error:
            raise APIError(str(error), 500, code="engine_error") from error
        finally:
            self.abort()
        body = await run_in_threadpool(lambda: serialize_response(build(choices)))
        return Response(body, media_type="application/json")

    # --- non-streaming bodies ---
    def _echo(self, choice_index: int) -> str:
        return self.echoes[choice_index // self.stream.n] if self.echoes else ""

    def _completion_logprobs(
        self, choice_index: int, logprobs: list[TokenLogprobs] | None, text_offset: int, first: bool
    ) -> CompletionLogprobs | None:
        """A choice's logprobs; its ``first`` piece, with echo, starts with the prompt's."""
        if logprobs is None:
            return None
        echo = self._echo(choice_index) if first else ""
        generated = self.formatter.completion(logprobs, text_offset + len(self._echo(choice_index)))
        if self.echoed_ids is None or not echo:
            return generated
        prompt_index = choice_index // self.stream.n
        return self.formatter.echoed(
            self.stream.prompt_logprobs[prompt_index], self.echoed_ids[prompt_index], generated
        )

    def _prompt_logprobs(self, choice_index: int) -> PromptLogprobs | None:
        """vLLM's ``prompt_logprobs`` of the choice's prompt, when the request set that field."""
        if not self.vllm_prompt_logprobs:
            return None
        return self.formatter.prompt(self.stream.prompt_logprobs[choice_index // self.stream.n])

    def completion_response(self, choices: list[CompletionOutput]) -> Completion:
        return Completion(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[
                CompletionChoice(
                    index=c.index,
                    text=self._echo(c.index) + c.text,
                    logprobs=self._completion_logprobs(c.index, c.logprobs, 0, first=True),
                    finish_reason=c.finish_reason,
                    stop_reason=c.stop_reason,
                    prompt_logprobs=self._prompt_logprobs(c.index),
                )
                for c in choices
            ],
            usage=usage(self.stream),
        )

    def _choice_parser(self) -> ChoiceParser:
        return ChoiceParser(self.tool_plan, self.state.chat.reasoning_parser, self.include_reasoning)

    def chat_response(self, choices: list[CompletionOutput]) -> ChatCompletion:
        built = []
        for c in choices:
            parser = self._choice_parser()
            parser.feed(c.text)
            parser.finish()
            built.append(
                ChatChoice(
                    index=c.index,
                    message=parser.message(),
                    logprobs=None
                    if c.logprobs is None
                    else self.formatter.chat(c.logprobs, self.num_top_logprobs),
                    finish_reason=parser.finish_reason(c.finish_reason),
                    stop_reason=c.stop_reason,
                )
            )
        return ChatCompletion(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=built,
            usage=usage(self.stream),
            prompt_logprobs=self._prompt_logprobs(0),
        )

    # --- streaming ---
    async def completion_events(self, include_usage: bool | None) -> AsyncIterator[bytes]:
        seen: set[int] = set()  # choices that sent their first chunk

        def chunk(delta: SequenceDelta, text_offset: int):
            text = delta.text
            first = delta.index not in seen
            seen.add(delta.index)
            if self.echoes and first:
                text = self._echo(delta.index) + text
            logprobs = self._completion_logprobs(delta.index, delta.logprobs, text_offset, first)
            choice = CompletionChoice(
                index=delta.index,
                text=text,
                logprobs=logprobs,
                finish_reason=delta.finish_reason,
                stop_reason=delta.stop_reason,
            )
            return CompletionChunk(id=self.id, created=self.created, model=self.model, choices=[choice])

        async for event in self._events(include_usage, chunk, CompletionChunk):
            yield event

    async def chat_events(self, include_usage: bool | None) -> AsyncIterator[bytes]:
        parsers = [self._choice_parser() for _ in range(self.stream.n)]

        def chunk(delta: SequenceDelta, _text_offset: int):
            parser = parsers[delta.index]
            piece = parser.feed(delta.text)
            if delta.finish_reason is not None:
                last = parser.finish()
                piece.content += last.content
                piece.reasoning += last.reasoning
                piece.calls += last.calls
            if not piece and delta.finish_reason is None and delta.logprobs is None:
                return None  # held back (a tag may be starting): nothing to send yet
            logprobs = (
                None if delta.logprobs is None else self.formatter.chat(delta.logprobs, self.num_top_logprobs)
            )
            choice = ChatChunkChoice(
                index=delta.index,
                delta=piece.as_delta(),
                logprobs=logprobs,
                finish_reason=parser.finish_reason(delta.finish_reason),
                stop_reason=delta.stop_reason,
            )
            return ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=[choice])

        for index in range(self.stream.n):
            first = ChatChunkChoice(index=index, delta=DeltaMessage(role="assistant", content=""))
            yield _event(
                ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=[first]),
                include_usage,
            )
        async for event in self._events(include_usage, chunk, ChatCompletionChunk):
            yield event

    async def _events(self, include_usage: bool | None, chunk, chunk_type) -> AsyncIterator[bytes]:
        """SSE events for every delta read. With ``stream_options.include_usage`` (as OpenAI defines
        it) every chunk carries ``usage: null`` and a last chunk with no choices carries the usage;
        without it no chunk has usage."""
        text_sent: dict[int, int] = {}  # characters sent per choice: the next delta's text offset
        try:
            async for deltas in self.stream:
                for delta in deltas:
                    offset = text_sent.get(delta.index, 0)
                    text_sent[delta.index] = offset + len(delta.text)
                    built = chunk(delta, offset)
                    if built is not None:
                        yield _event(built, include_usage)
                if self.stream.finished and include_usage:
                    final = chunk_type(
                        id=self.id,
                        created=self.created,
                        model=self.model,
                        choices=[],
                        usage=usage(self.stream),
                    )
                    yield _event(final, include_usage)
        except RequestFailed as error:
            yield b"data: " + dump_json(error_body(str(error), 500, code="engine_error")) + b"\n\n"
        yield DONE_EVENT  # the response's on_close aborts what is left (nothing, after a normal end)


def _event(chunk, include_usage: bool | None) -> bytes:
    """One SSE event; ``usage`` is in the body only when the client asked for usage."""
    body = chunk.model_dump(mode="json", exclude=None if include_usage else {"usage"})
    return b"data: " + dump_json(body) + b"\n\n"
