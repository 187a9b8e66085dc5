"""What a KV-aware router asks a worker before it subscribes to its KV events.

vllm-router's ``kv_aware`` policy, for every worker it finds (``--worker-urls`` or Kubernetes service
discovery), reads ``GET /get_server_info`` (which model, which block size, a stable instance id) and
``GET /kv_event_sources`` (a map from data-parallel rank to the ZMQ publisher, shaped like vLLM's
``KVEventsConfig``), then subscribes. A bind address (``tcp://*:5557``) is rewritten by the router to
the worker's own host, so one pod template serves every replica. Without ``--kv-events-endpoint``,
``/kv_event_sources`` is 404: the router skips the worker's events (and routes it by load).
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request

from mili.worker.server.errors import APIError, JSONBody
from mili.worker.server.routes import _state

kv_discovery = APIRouter()
INSTANCE_ID = uuid.uuid4().hex  # one per worker process: a restarted worker is a new event source
DATA_PARALLEL_RANK = "0"  # a MILI worker is one engine


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
    endpoint = _state(request).engine.config.kv_events_endpoint
    if endpoint is None:
        raise APIError("this worker publishes no KV events (start it with --kv-events-endpoint)", 404)
    source = {"endpoint": endpoint, "topic": "", "publisher": "zmq", "enable_kv_cache_events": True}
    return JSONBody({DATA_PARALLEL_RANK: source})
