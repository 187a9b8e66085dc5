"""What a KV-aware router asks a worker: its KV-event publisher, and a prompt's token ids.

vllm-router's ``kv_aware`` policy, for every worker it finds (``--worker-urls`` or Kubernetes service
discovery), reads ``GET /get_server_info`` (which model, which block size, a stable instance id) and
``GET /kv_event_sources`` (a map from data-parallel rank to the ZMQ publisher and its replay address,
shaped like vLLM's ``KVEventsConfig``), then subscribes. A bind address (``tcp://*:5557``) is
rewritten by the router to the worker's own host, so one pod template serves every replica. Without
``--kv-events-endpoint``, ``/kv_event_sources`` is 404: the router skips the worker's events (and
routes it by load).
(vllm-router 0.1.17 reads both, but subscribes only to the sources it is given with
``--kv-event-source``; see docs/routing.md.)

To score a text prompt against the blocks it knows, the router needs its token ids: it posts the
client's completion request to ``POST /v1/completions/render`` (with the client's Authorization
header) and reads ``token_ids`` from the list it gets back, one entry per prompt, in the shape of
vLLM's render API (vLLM's entries also carry its sampling parameters, which nobody here needs).
"""

from __future__ import annotations

import json
import uuid

from fastapi import APIRouter, Request
from pydantic import TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool

from mili.worker.server import inputs
from mili.worker.server.errors import APIError, JSONBody
from mili.worker.server.protocol import CompletionRequest
from mili.worker.server.routes import _check_model, _state, _tokenizer

kv_discovery = APIRouter()
INSTANCE_ID = uuid.uuid4().hex  # one per worker process: a restarted worker is a new event source
DATA_PARALLEL_RANK = "0"  # a MILI worker is one engine
PROMPT = TypeAdapter(CompletionRequest.model_fields["prompt"].annotation)


@kv_discovery.get("/get_server_info", summary="Model, KV block size and instance id, for a KV-aware router")
async def get_server_info(request: Request) -> JSONBody:
    state = _state(request)
    return JSONBody(
        {
            "model_id": state.served_name,
            "instance_id": INSTANCE_ID,
            "kv_block_size": state.engine.config.block_size,
        }
    )


@kv_discovery.get(
    "/kv_event_sources", summary="This worker's KV-event publisher, keyed by data-parallel rank"
)
async def kv_event_sources(request: Request) -> JSONBody:
    config = _state(request).engine.config
    if config.kv_events_endpoint is None:
        raise APIError("this worker publishes no KV events (start it with --kv-events-endpoint)", 404)
    source = {
        "endpoint": config.kv_events_endpoint,
        "replay_endpoint": config.kv_events_replay_endpoint,
        "topic": "",
        "publisher": "zmq",
        "enable_kv_cache_events": True,
    }
    return JSONBody({DATA_PARALLEL_RANK: source})


@kv_discovery.post("/v1/completions/render", summary="A completion request's prompts as token ids")
async def render_completion(request: Request) -> JSONBody:
    """Only ``model``, ``prompt`` and ``add_special_tokens`` matter here; the other fields belong to the
    completion the router sends next, which checks them (so they are not refused here)."""
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise APIError("the body is not JSON") from None
    if not isinstance(body, dict) or "prompt" not in body:
        raise APIError("send a completion request with a prompt", param="prompt")
    try:  # the prompt types /v1/completions accepts, declared once on its request model
        prompt = PROMPT.validate_python(body["prompt"])
    except ValidationError:
        raise APIError("prompt must be a string, a list of strings or token ids", param="prompt") from None
    state = _state(request)
    _check_model(state, body.get("model"))
    max_chars = inputs.max_prompt_chars(state.engine.max_model_len)
    add_special = body.get("add_special_tokens") is not False
    prompts = await run_in_threadpool(
        inputs.completion_prompts, _tokenizer(state), prompt, max_chars, add_special
    )
    return JSONBody([{"model": state.served_name, "token_ids": tokens} for tokens in prompts])
