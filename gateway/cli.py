"""``mili-gateway``: the holding step in front of vllm-router (one per router pod)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import uvicorn
from prometheus_client import start_http_server

from mili.gateway.proxy import Gateway, GatewayConfig


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mili-gateway", description=__doc__)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--router-url", required=True, help="vllm-router's base URL, e.g. http://127.0.0.1:8001"
    )
    parser.add_argument(
        "--hold-timeout",
        type=positive_float,
        default=300.0,
        help="seconds a request may wait for a ready worker (the MiliDeployment's coldStartTimeoutSeconds)",
    )
    parser.add_argument(
        "--max-held-requests",
        type=non_negative_int,
        default=256,
        help="requests held at a time; beyond them 503 with Retry-After",
    )
    parser.add_argument("--readiness-interval", type=positive_float, default=0.5)
    parser.add_argument(
        "--max-request-bytes", type=non_negative_int, default=16 * 2**20, help="larger bodies get 413"
    )
    parser.add_argument("--metrics-host", default="0.0.0.0")
    parser.add_argument("--metrics-port", type=int, default=29001)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per forwarded request is noise
    gateway = Gateway(
        GatewayConfig(
            router_url=args.router_url,
            hold_timeout=args.hold_timeout,
            max_held_requests=args.max_held_requests,
            readiness_interval=args.readiness_interval,
            max_request_bytes=args.max_request_bytes,
        )
    )
    start_http_server(args.metrics_port, addr=args.metrics_host, registry=gateway.metrics.registry)
    uvicorn.run(gateway.app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)


if __name__ == "__main__":
    main()
