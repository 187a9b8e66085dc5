"""The FastAPI application: ``create_app(config)`` builds a server for one model.

The engine thread starts with the app (``lifespan``) and loads in the background, so ``/health``
answers at once and ``/ready`` turns 200 once weights are loaded and warmed up. On shutdown the
ASGI server first drains in-flight requests (uvicorn's graceful-shutdown timeout), then the engine
aborts whatever is left and stops.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from mili.worker.config import EngineConfig
from mili.worker.metrics import WorkerMetrics
from mili.worker.server.async_engine import AsyncEngine
from mili.worker.server.errors import install_error_handlers
from mili.worker.server.routes import ServerState, openai_api, probes, require_api_key


def served_name_of(config: EngineConfig) -> str:
    """The name clients put in ``model``: ``served_name``, else the model source."""
    return config.served_name or config.model


def create_app(config: EngineConfig, api_key: str | None = None, warm_up: bool = True) -> FastAPI:
    """A MILI worker app serving ``config.model``; bearer auth on /v1 when ``api_key`` is set."""
    served_name = served_name_of(config)
    metrics = WorkerMetrics(served_name)
    engine = AsyncEngine(config, metrics, warm_up=warm_up)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        yield
        await engine.stop()

    app = FastAPI(
        title="MILI worker",
        summary="OpenAI-compatible inference server of one model",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.mili = ServerState(engine, metrics, served_name, api_key or None, created=int(time.time()))
    install_error_handlers(app)
    app.include_router(probes)
    app.include_router(openai_api, dependencies=[Depends(require_api_key)])
    return app
