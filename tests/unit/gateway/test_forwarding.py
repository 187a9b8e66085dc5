"""The passthrough's rules: end-to-end headers travel, hop-by-hop ones stop, only the OpenAI API waits."""

from __future__ import annotations

import json

from mili.gateway.forwarding import (
    RETRY_AFTER_SECONDS,
    may_hold,
    request_headers,
    response_headers,
    timed_out_message,
    unavailable_body,
)


def test_authorization_and_content_headers_travel_to_the_router() -> None:
    headers = [
        ("Authorization", "Bearer key"),
        ("Content-Type", "application/json"),
        ("X-Request-Id", "r1"),
        ("Accept", "text/event-stream"),
    ]
    assert request_headers(headers) == headers


def test_hop_by_hop_and_forwarder_headers_stop_at_the_gateway() -> None:
    headers = [
        ("Host", "gateway:8000"),
        ("Content-Length", "12"),
        ("Connection", "keep-alive, X-Trace"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("Proxy-Authorization", "Basic abc"),
        ("X-Trace", "only for this hop"),
        ("Authorization", "Bearer key"),
    ]
    assert request_headers(headers) == [("Authorization", "Bearer key")]


def test_the_routers_length_and_encoding_stay_since_its_bytes_pass_unchanged() -> None:
    headers = [
        ("content-length", "42"),
        ("content-encoding", "gzip"),
        ("set-cookie", "a=1"),
        ("set-cookie", "b=2"),
        ("transfer-encoding", "chunked"),
        ("connection", "close"),
    ]
    assert response_headers(headers) == headers[:4]


def test_only_openai_api_requests_are_held() -> None:
    assert may_hold("/v1/completions")
    assert may_hold("/v1/chat/completions")
    assert may_hold("/v1/models")
    assert not may_hold("/health")
    assert not may_hold("/readiness")
    assert not may_hold("/workers")
    assert not may_hold("/v1")


def test_the_503_is_in_openais_error_shape_and_names_the_timeout() -> None:
    body = json.loads(unavailable_body(timed_out_message(300), "no_ready_worker"))
    assert body["error"]["code"] == "no_ready_worker"
    assert body["error"]["type"] == "service_unavailable_error"
    assert "300 s" in body["error"]["message"]
    assert "coldStartTimeoutSeconds" in body["error"]["message"]
    assert f"retry in {RETRY_AFTER_SECONDS} s" in body["error"]["message"]
