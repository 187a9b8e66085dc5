"""The gateway app without a router: its own liveness, and bodies over the limit refused with 413."""

from __future__ import annotations

from starlette.testclient import TestClient

from mili.gateway.proxy import Gateway, GatewayConfig
from mili_testing import free_port


def gateway(max_request_bytes: int) -> Gateway:
    # Nothing listens at the router URL: the requests tested here never reach it.
    config = GatewayConfig(
        router_url=f"http://127.0.0.1:{free_port()}",
        hold_timeout=1.0,
        max_held_requests=1,
        max_request_bytes=max_request_bytes,
    )
    return Gateway(config)


def test_liveness_is_the_gateways_own():
    with TestClient(gateway(1024).app) as client:
        assert client.get("/gateway/health").status_code == 200


def test_a_body_over_the_limit_gets_413_naming_the_limit():
    with TestClient(gateway(1024).app) as client:
        answer = client.post("/v1/completions", content=b"x" * 2048)
    assert answer.status_code == 413
    assert answer.json()["error"]["code"] == "body_too_large"
    assert "1024 bytes" in answer.json()["error"]["message"]


def test_an_unreachable_router_is_a_502_for_the_routers_own_endpoints():
    with TestClient(gateway(1024).app) as client:
        answer = client.get("/health")
    assert answer.status_code == 502
    assert answer.json()["error"]["code"] == "router_unreachable"
