"""The gateway's ASGI app: forward to vllm-router, hold OpenAI API requests while it has no worker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from mili.gateway.forwarding import (
    RETRY_AFTER_SECONDS,
    full_message,
    may_hold,
    request_headers,
    response_headers,
    timed_out_message,
    unavailable_body,
)
from mili.gateway.holding import Admission, HoldingRoom, is_no_workers_answer
from mili.gateway.metrics import GatewayMetrics

log = logging.getLogger("mili.gateway")
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
LIVENESS_PATH = "/gateway/health"  # the gateway's own; /health passes through to the router's


@dataclass(frozen=True)
class GatewayConfig:
    router_url: str
    hold_timeout: float  # seconds a request may wait for a worker (coldStartTimeoutSeconds)
    max_held_requests: int
    readiness_interval: float = 0.5  # seconds between polls of the router's /readiness
    max_request_bytes: int = 16 * 2**20  # the workers' default --max-request-bytes


class Gateway:
    """One router behind it; ``app`` is the ASGI application."""

    def __init__(self, config: GatewayConfig, metrics: GatewayMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or GatewayMetrics()
        self.room = HoldingRoom(config.max_held_requests, on_change=self.metrics.held_requests.set)
        self._client: httpx.AsyncClient | None = None
        self.app = Starlette(
            routes=[
                Route(LIVENESS_PATH, self._liveness, methods=["GET"]),
                Route("/{path:path}", self._forward, methods=METHODS),
            ],
            lifespan=self._lifespan,
        )

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        timeout = httpx.Timeout(connect=5.0, read=None, write=None, pool=None)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        client = httpx.AsyncClient(base_url=self.config.router_url, timeout=timeout, limits=limits)
        async with client:
            self._client = client
            watcher = asyncio.create_task(self._watch_router_readiness())
            try:
                yield
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher

    async def _watch_router_readiness(self) -> None:
        """The router's /readiness is 200 once it has a healthy worker: that opens the holding room."""
        while True:
            try:
                answer = await self._client.get("/readiness", timeout=self.config.readiness_interval * 4)
                self.room.set_ready(answer.status_code == 200)
            except httpx.HTTPError:
                self.room.set_ready(False)
            await asyncio.sleep(self.config.readiness_interval)

    async def _liveness(self, _request: Request) -> Response:
        return PlainTextResponse("ok")

    async def _forward(self, request: Request) -> Response:
        body = await self._read_body(request)  # a held request is sent again: the body is read, whole
        if body is None:
            limit = self.config.max_request_bytes
            message = f"the request body is larger than the gateway's limit of {limit} bytes"
            error = {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": "body_too_large",
            }
            return Response(json.dumps({"error": error}), 413, media_type="application/json")
        if not may_hold(request.url.path):
            return await self._pass_through(request, body)
        deadline = time.monotonic() + self.config.hold_timeout
        while True:
            refusal = await self._wait_for_worker(deadline)
            if refusal is not None:
                return refusal
            try:
                upstream = await self._send(request, body)
            except httpx.TransportError as error:
                if time.monotonic() >= deadline:
                    return _router_unreachable(error)
                self.room.set_ready(False)  # the router is not reachable (yet): wait as for a worker
                continue
            if upstream.status_code == 503:
                content = await _raw_body(upstream)
                if is_no_workers_answer(upstream.status_code, content) and time.monotonic() < deadline:
                    self.room.set_ready(False)  # its last worker went: wait for the next one
                    continue
                return _with_headers_of(upstream, Response(content, upstream.status_code))
            return self._stream(upstream)

    async def _read_body(self, request: Request) -> bytes | None:
        """The whole body, or None once it passes ``max_request_bytes`` (declared or read)."""
        limit = self.config.max_request_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return None
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def _wait_for_worker(self, deadline: float) -> Response | None:
        """None when a worker is ready (at once, or after holding the request); else the 503 to answer."""
        if self.room.ready:
            return None
        started = time.monotonic()
        admission = await self.room.wait_for_worker(deadline)
        self.metrics.holds.labels(admission.value).inc()
        if admission is Admission.READY:
            log.info("held request released after %.1f s: a worker is ready", time.monotonic() - started)
            return None
        if admission is Admission.FULL:
            log.warning("request refused: %d requests held already", self.room.capacity)
            return _unavailable(full_message(self.room.capacity), "holding_full")
        log.warning("held request timed out after %.1f s without a ready worker", self.config.hold_timeout)
        return _unavailable(timed_out_message(self.config.hold_timeout), "no_ready_worker")

    async def _pass_through(self, request: Request, body: bytes) -> Response:
        try:
            upstream = await self._send(request, body)
        except httpx.TransportError as error:
            return _router_unreachable(error)
        return self._stream(upstream)

    async def _send(self, request: Request, body: bytes) -> httpx.Response:
        outgoing = self._client.build_request(
            request.method,
            request.url.path,
            params=request.url.query,
            headers=request_headers(request.headers.items()),
            content=body,
        )
        return await self._client.send(outgoing, stream=True)

    def _stream(self, upstream: httpx.Response) -> StreamingResponse:
        """The router's answer, byte for byte as it arrives (server-sent events included)."""

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            finally:
                await upstream.aclose()  # also when the client went away: the router sees it go

        return _with_headers_of(upstream, StreamingResponse(chunks(), upstream.status_code))


def _router_unreachable(error: httpx.TransportError) -> Response:
    log.warning("the router is not reachable: %r", error)
    body = unavailable_body(f"the router is not reachable ({type(error).__name__})", "router_unreachable")
    return Response(body, 502, media_type="application/json")


def _unavailable(message: str, code: str) -> Response:
    return Response(
        unavailable_body(message, code),
        503,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        media_type="application/json",
    )


async def _raw_body(upstream: httpx.Response) -> bytes:
    try:
        return b"".join([chunk async for chunk in upstream.aiter_raw()])
    finally:
        await upstream.aclose()


def _with_headers_of(upstream: httpx.Response, response: Response) -> Response:
    """``response`` carrying exactly the router's end-to-end headers (repeated ones such as
    ``set-cookie`` included), since its body is the router's, byte for byte."""
    response.raw_headers = [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in response_headers(upstream.headers.multi_items())
    ]
    return response
