"""Errors in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, and the handlers
that turn every failure (validation, unknown route, bug) into one.

Validation errors answer 400 (what OpenAI answers), not FastAPI's default 422, with a message naming
the field and what was wrong with it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from mili.worker.server.limits import RETRY_AFTER_S

logger = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_server_error",
    503: "service_unavailable",
}


class APIError(Exception):
    """An error the API reports to the client; raise it from a route."""

    def __init__(
        self,
        message: str,
        status_code: int = 400,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.param = param
        self.code = code
        self.headers = headers

    @property
    def rejection_reason(self) -> str | None:
        """How ``mili_requests_rejected_total`` counts this refusal (None: not a refusal, a failure)."""
        if self.status_code == 503:
            return self.code or "unavailable"
        if self.status_code == 413:
            return "body_too_large"
        if self.status_code == 401:
            return "unauthorized"
        return "invalid_request" if 400 <= self.status_code < 500 else None

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.status_code, self.param, self.code)


def queue_full_error(limit: int) -> APIError:
    """503 for a call that would pass the queue limit: OpenAI's shape, and when to retry."""
    return APIError(
        f"the server is at capacity ({limit} requests waiting); retry later or on another replica",
        503,
        code="queue_full",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def error_body(message: str, status_code: int, param: str | None = None, code: str | None = None) -> dict:
    kind = _TYPES.get(status_code, "invalid_request_error" if status_code < 500 else "internal_server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def dump_json(content: Any) -> bytes:
    """JSON bytes that never fail on text: lone surrogates (valid in JSON input) become U+FFFD."""
    return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")


class JSONBody(Response):
    """A JSON response rendered with ``dump_json``."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dump_json(content)


def error_response(error: APIError, headers: dict[str, str] | None = None) -> JSONBody:
    return JSONBody(error.body(), status_code=error.status_code, headers=headers or error.headers)


def describe_validation_errors(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """A readable message for pydantic errors, and the first offending field (dotted) as ``param``."""
    parts, first_param = [], None
    for error in errors[:5]:
        loc = [str(part) for part in error.get("loc", ()) if part != "body"]
        if error.get("type") == "json_invalid":
            context = error.get("ctx", {}).get("error", "")
            parts.append(f"the request body is not valid JSON ({context})".replace(" ()", ""))
            continue
        # A union (e.g. prompt: str | list[int]) reports each alternative; its members' tags are noise.
        loc = [part for part in loc if not _is_union_tag(part)]
        param = ".".join(loc) or None
        first_param = first_param or param
        message = error.get("msg", "is invalid")
        parts.append(f"{param}: {message}" if param else f"the request body: {message}")
    message = "; ".join(dict.fromkeys(parts)) or "the request is invalid"
    if len(errors) > 5:
        message += f" (and {len(errors) - 5} more errors)"
    return message, first_param


def _is_union_tag(part: str) -> bool:
    return part in {"str", "int", "float", "bool"} or part.startswith(("list[", "dict[", "function-"))


def install_error_handlers(app: FastAPI) -> None:
    """Route every failure through the OpenAI error shape."""

    def refuse(request: Request, error: APIError) -> Response:
        if error.rejection_reason is not None:
            request.app.state.mili.metrics.observe_rejection(error.rejection_reason)
        return error_response(error)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, error: APIError) -> Response:
        return refuse(request, error)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> Response:
        message, param = describe_validation_errors(list(error.errors()))
        return refuse(request, APIError(message, 400, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, error: StarletteHTTPException) -> Response:
        message = error.detail if isinstance(error.detail, str) else json.dumps(error.detail)
        return error_response(APIError(message, error.status_code), headers=getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> Response:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(APIError(f"internal error: {type(error).__name__}", 500))
