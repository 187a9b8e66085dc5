"""The FastAPI application: ``create_app(config)`` builds a server for one model.

The engine thread starts with the app (``lifespan``) and loads in the background, so ``/health``
answers at once and ``/ready`` turns 200 once weights are loaded and warmed up. On shutdown the
ASGI server first drains in-flight requests (uvicorn's graceful-shutdown timeout), then the engine
aborts whatever is left and stops.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from mili.worker.config import EngineConfig
from mili.worker.metrics import WorkerMetrics
from mili.worker.server.async_engine import AsyncEngine
from mili.worker.server.chat_choices import ChatOptions
from mili.worker.server.errors import install_error_handlers
from mili.worker.server.gate import RequestGate
from mili.worker.server.kv_discovery_routes import kv_discovery
from mili.worker.server.limits import ServerLimits
from mili.worker.server.routes import ServerState, openai_api, probes
from mili.worker.server.tokenize_routes import tokenizer_api

logger = logging.getLogger(__name__)


def served_name_of(config: EngineConfig) -> str:
    """The name clients put in ``model``: ``served_name``, else the model source."""
    return config.served_name or config.model


def normalize_api_key(api_key: str | None) -> str | None:
    """The key without surrounding whitespace (a Secret made ``--from-file`` ends in a newline);
    a key that is set but blank is refused: it would look like auth while letting nobody in."""
    if api_key is None:
        return None
    stripped = api_key.strip()
    if not stripped:
        raise ValueError("the API key (--api-key or MILI_API_KEY) is set but blank; unset it or give a key")
    return stripped


def create_app(
    config: EngineConfig,
    api_key: str | None = None,
    warm_up: bool = True,
    limits: ServerLimits | None = None,
    chat: ChatOptions | None = None,
) -> FastAPI:
    """A MILI worker app serving ``config.model``; bearer auth on /v1 when ``api_key`` is set."""
    api_key = normalize_api_key(api_key)
    limits = limits or ServerLimits()
    served_name = served_name_of(config)
    metrics = WorkerMetrics(served_name)
    engine = AsyncEngine(
        config,
        metrics,
        warm_up=warm_up,
        max_queued_requests=limits.max_queued_requests,
        health_limits=limits.health,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        logger.info("API key authentication is %s", "on for /v1" if api_key else "off")
        engine.start()
        yield
        await engine.stop()

    app = FastAPI(
        title="MILI worker",
        summary="OpenAI-compatible inference server of one model",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.mili = ServerState(
        engine,
        metrics,
        served_name,
        api_key,
        created=int(time.time()),
        limits=limits,
        chat=chat or ChatOptions(),
    )
    install_error_handlers(app)
    app.include_router(probes)
    app.include_router(openai_api)
    app.include_router(tokenizer_api)
    app.include_router(kv_discovery)
    app.add_middleware(RequestGate)
    return app
