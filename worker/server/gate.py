"""What every ``/v1`` request passes before the app sees it: the API key, a full queue, then the
body size limit.

An ASGI middleware, so all are checked before anything is parsed: a client without the key cannot
make the server read (or buffer) its body; while the engine's queue is full, new work is shed at the
cost of reading its headers (the handler checks again, exactly, when it admits the call's requests);
a body over ``max_request_bytes`` is answered 413 as soon as its ``Content-Length`` says so, or as
soon as that many bytes arrived. The body read here is handed to the app unchanged. The gate also
counts the calls in flight, which draining waits for.
"""

from __future__ import annotations

import secrets

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mili.worker.server.errors import APIError, error_response, queue_full_error

API_PREFIXES = ("/v1", "/tokenize", "/detokenize")  # the OpenAI API and vLLM's tokenizer API
_CLIENT_GONE = object()


class RequestGate:
    """ASGI middleware in front of the app; reads its settings from ``app.state.mili``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(API_PREFIXES):
            await self.app(scope, receive, send)
            return
        state = scope["app"].state.mili
        refusal = (
            _unauthorized(state.api_key, scope)
            or _queue_full(state.engine, scope)
            or _declared_too_large(state.limits.max_request_bytes, scope)
        )
        body = b""
        if refusal is None:
            body = await _read_body(receive, state.limits.max_request_bytes)
            if body is _CLIENT_GONE:
                return
            if body is None:
                refusal = _too_large(state.limits.max_request_bytes)
        if refusal is not None:
            state.metrics.observe_rejection(refusal.rejection_reason)
            await error_response(refusal)(scope, receive, send)
            return
        state.calls_in_flight += 1
        try:
            await self.app(scope, _replay(body, receive), send)
        finally:
            state.calls_in_flight -= 1


def _unauthorized(api_key: str | None, scope: Scope) -> APIError | None:
    if not api_key:
        return None
    header = _header(scope, b"authorization")
    scheme, _, given = header.partition(" ")
    if scheme.lower() == "bearer" and secrets.compare_digest(given.strip().encode(), api_key.encode()):
        return None
    return APIError(
        "Incorrect or missing API key: send 'Authorization: Bearer <key>'", 401, code="invalid_api_key"
    )


def _queue_full(engine, scope: Scope) -> APIError | None:
    if scope["method"] != "POST" or not engine.queue_is_full:
        return None
    return queue_full_error(engine.max_queued_requests)


def _declared_too_large(limit: int, scope: Scope) -> APIError | None:
    declared = _header(scope, b"content-length")
    if declared.isdigit() and int(declared) > limit:
        return _too_large(limit)
    return None


def _too_large(limit: int) -> APIError:
    return APIError(
        f"the request body exceeds the server's limit of {limit} bytes", 413, code="request_too_large"
    )


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


async def _read_body(receive: Receive, limit: int) -> bytes | object | None:
    """The whole body; None as soon as it passes ``limit`` bytes; ``_CLIENT_GONE`` if the client left."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return _CLIENT_GONE
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that first hands out ``body``, then passes through (disconnect messages)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay
