"""Pure rules of the passthrough: which headers travel, which requests may be held, the 503 we answer."""

from __future__ import annotations

import json
from collections.abc import Iterable

# Hop-by-hop headers (RFC 9110 §7.6.1) describe one connection, not the request; `host` and
# `content-length` are set again by the client that forwards. `Authorization` is end to end and travels.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
SET_BY_FORWARDER = frozenset({"host", "content-length"})
HELD_PATH_PREFIX = "/v1/"  # the OpenAI API; the router's own endpoints (/health, /workers, ...) never wait
RETRY_AFTER_SECONDS = 5


def request_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The client's headers as the router should get them."""
    dropped = HOP_BY_HOP | SET_BY_FORWARDER | _named_in_connection(headers)
    return [(name, value) for name, value in headers if name.lower() not in dropped]


def response_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The router's headers as the client should get them (the body passes through byte for byte, so
    ``content-length`` and ``content-encoding`` stay true)."""
    dropped = HOP_BY_HOP | _named_in_connection(headers)
    return [(name, value) for name, value in headers if name.lower() not in dropped]


def _named_in_connection(headers: Iterable[tuple[str, str]]) -> frozenset[str]:
    """Headers a ``Connection`` header names are hop-by-hop too."""
    return frozenset(
        token.strip().lower()
        for name, value in headers
        if name.lower() == "connection"
        for token in value.split(",")
        if token.strip()
    )


def may_hold(path: str) -> bool:
    """Requests to the OpenAI API wait for a worker; everything else goes to the router at once."""
    return path.startswith(HELD_PATH_PREFIX)


def unavailable_body(message: str, code: str) -> bytes:
    """A 503 in OpenAI's error shape."""
    error = {"message": message, "type": "service_unavailable_error", "param": None, "code": code}
    return json.dumps({"error": error}).encode()


def full_message(capacity: int) -> str:
    return (
        f"no worker is ready yet and {capacity} requests are already waiting for one (the gateway's "
        f"limit); retry in {RETRY_AFTER_SECONDS} s"
    )


def timed_out_message(timeout: float) -> str:
    return (
        f"no worker became ready within {timeout:g} s (autoscaling.coldStartTimeoutSeconds); "
        f"retry in {RETRY_AFTER_SECONDS} s"
    )
