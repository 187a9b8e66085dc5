"""The operator's own Prometheus metrics (names are contract: docs/architecture.md "Metrics")."""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge, start_http_server

DESIRED_REPLICAS = Gauge(
    "mili_operator_desired_replicas",
    "Worker replicas the operator wants for a MiliDeployment",
    ["namespace", "mili_deployment"],
)
SCALE_DECISIONS = Counter(
    "mili_operator_scale_decisions_total",
    "Autoscaler decisions, by direction (up, down, none)",
    ["direction"],
)
RECONCILE_ERRORS = Counter(
    "mili_operator_reconcile_errors_total",
    "Reconcile passes that failed (invalid spec, child conflict or API error)",
)

for _direction in ("up", "down", "none"):
    SCALE_DECISIONS.labels(direction=_direction)


def forget(namespace: str, name: str) -> None:
    """Drop the series of a deleted MiliDeployment."""
    with contextlib.suppress(KeyError):
        DESIRED_REPLICAS.remove(namespace, name)


def serve(port: int, host: str = "0.0.0.0") -> None:
    """Serve GET /metrics on ``port`` from a daemon thread (0: do nothing)."""
    if port:
        start_http_server(port, addr=host)
