"""The gateway's Prometheus metrics (served on its own metrics port)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

HELD_REQUESTS_METRIC = "mili_router_held_requests"  # the autoscaler's wake-from-zero signal reads it


class GatewayMetrics:
    """Held requests now, and how the holds ended."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.held_requests = Gauge(
            HELD_REQUESTS_METRIC,
            "Requests the gateway holds because the router has no ready worker",
            registry=self.registry,
        )
        self.holds = Counter(
            "mili_router_holds",
            "Requests that were held, by how the hold ended (ready, full, timed_out)",
            ["outcome"],
            registry=self.registry,
        )
