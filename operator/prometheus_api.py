"""A thin async client of Prometheus's HTTP API, and the PromQL the autoscaler asks.

The queries select one MiliDeployment's worker pods by the labels the shipped scrape config attaches
(``namespace`` and ``mili_deployment`` by default; see manifests/prometheus/) and keep only targets
that are up now, so a pod that left within the window does not count (the scrape config itself only
keeps ready pods). Each metric is averaged over the window per pod, then across pods.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from mili.gateway.metrics import HELD_REQUESTS_METRIC  # the router pods' gateways export it
from mili.operator.autoscaling import Observation, waiting_per_replica

logger = logging.getLogger(__name__)

KV_CACHE_METRIC = "mili_kv_cache_usage_ratio"
WAITING_METRIC = "mili_num_requests_waiting"
ROUTER_REQUESTS_METRIC = "vllm_router_requests_total"  # the router job's (mili.operator.router)
# Requests waiting in front of the workers. vllm-router 0.1.17 exports no gauge of its own queue (its
# queue counters stay internal); the routers' holding step exports this one (optional: absent → 0).


_ERROR_TYPE = re.compile(r"^[a-z_]{1,32}$")  # Prometheus's errorType: bad_data, timeout, execution, ...


class PrometheusError(Exception):
    """Prometheus could not answer a query (unreachable, timed out, or refused it)."""


@dataclass(frozen=True)
class QuerySettings:
    """Which target labels name a MiliDeployment's pods, and the averaging window of the queries."""

    namespace_label: str = "namespace"
    deployment_label: str = "mili_deployment"
    window: str = "1m"  # a PromQL duration
    timeout_seconds: float = 5.0

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> QuerySettings:
        """``MILI_PROMETHEUS_NAMESPACE_LABEL``, ``MILI_PROMETHEUS_DEPLOYMENT_LABEL``,
        ``MILI_AUTOSCALING_WINDOW`` and ``MILI_PROMETHEUS_TIMEOUT``, each defaulting as above."""
        default = cls()
        return cls(
            namespace_label=environ.get("MILI_PROMETHEUS_NAMESPACE_LABEL") or default.namespace_label,
            deployment_label=environ.get("MILI_PROMETHEUS_DEPLOYMENT_LABEL") or default.deployment_label,
            window=environ.get("MILI_AUTOSCALING_WINDOW") or default.window,
            timeout_seconds=float(environ.get("MILI_PROMETHEUS_TIMEOUT") or default.timeout_seconds),
        )


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def pod_selector(settings: QuerySettings, namespace: str, name: str) -> str:
    """``{namespace="NS",mili_deployment="NAME"}`` with the configured label names."""
    return f"{{{settings.namespace_label}={_quote(namespace)},{settings.deployment_label}={_quote(name)}}}"


def average_over_ready_pods(metric: str, settings: QuerySettings, namespace: str, name: str) -> str:
    """PromQL: ``metric`` averaged over the window per pod, then over the pods whose target is up."""
    selector = pod_selector(settings, namespace, name)
    return f"avg(avg_over_time({metric}{selector}[{settings.window}]) and on(instance) (up{selector} == 1))"


def router_requests(settings: QuerySettings, namespace: str, name: str) -> str:
    """PromQL: requests that reached the MiliDeployment's routers within the window."""
    selector = pod_selector(settings, namespace, name)
    return f"sum(increase({ROUTER_REQUESTS_METRIC}{selector}[{settings.window}]))"


def held_requests(settings: QuerySettings, namespace: str, name: str) -> str:
    """PromQL: requests the gateways hold for a worker, averaged over the window, summed over router pods."""
    selector = pod_selector(settings, namespace, name)
    return f"sum(avg_over_time({HELD_REQUESTS_METRIC}{selector}[{settings.window}]))"


def ready_workers(settings: QuerySettings, namespace: str, name: str) -> str:
    """PromQL: the worker pods that report a queue and whose target is up (the pods the averages span)."""
    selector = pod_selector(settings, namespace, name)
    return f"count({WAITING_METRIC}{selector} and on(instance) (up{selector} == 1))"


class PrometheusClient:
    """Instant queries against one Prometheus; use as ``async with PrometheusClient(url) as p:``."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout)

    async def __aenter__(self) -> PrometheusClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector of ``expr`` now: ``[{"metric": {...}, "value": [ts, "1.5"]}, ...]``.

        Errors say what went wrong in our words (status code, Prometheus's error type); the response
        body is never copied into them: they end up in status conditions and Events."""
        try:
            response = await self._http.get("/api/v1/query", params={"query": expr})
        except httpx.TimeoutException as error:
            raise PrometheusError(f"Prometheus at {self.url} timed out ({type(error).__name__})") from error
        except httpx.HTTPError as error:
            raise PrometheusError(
                f"Prometheus at {self.url} is unreachable ({type(error).__name__})"
            ) from error
        try:
            payload = response.json()
        except ValueError as error:
            logger.debug("Prometheus at %s answered %r", self.url, response.text[:200])
            raise PrometheusError(
                f"Prometheus at {self.url} answered HTTP {response.status_code} without JSON to {expr!r}"
            ) from error
        if not isinstance(payload, dict):
            raise PrometheusError(
                f"Prometheus at {self.url} answered HTTP {response.status_code}, not an object"
            )
        if payload.get("status") != "success":
            kind = payload.get("errorType")
            kind = (
                kind if isinstance(kind, str) and _ERROR_TYPE.match(kind) else f"HTTP {response.status_code}"
            )
            raise PrometheusError(f"Prometheus at {self.url} refused {expr!r}: {kind}")
        data = payload.get("data")
        if not isinstance(data, dict) or data.get("resultType") != "vector":
            raise PrometheusError(f"Prometheus at {self.url} gave no instant vector for {expr!r}")
        result = data.get("result") or []
        if not isinstance(result, list):
            raise PrometheusError(f"Prometheus at {self.url} gave a malformed vector for {expr!r}")
        return result

    async def scalar(self, expr: str) -> float | None:
        """The single value of ``expr``; None when it has no samples. A value that is not a finite,
        non-negative number (garbage, NaN, +Inf, below zero) is an error: no decision is made on it."""
        result = await self.query(expr)
        if not result:
            return None
        if len(result) > 1:
            raise PrometheusError(f"{expr!r} gave {len(result)} series, expected one")
        try:
            value = float(result[0]["value"][1])
        except (KeyError, IndexError, TypeError, ValueError) as error:
            raise PrometheusError(
                f"Prometheus at {self.url} gave a sample that is not a number for {expr!r}"
            ) from error
        if not math.isfinite(value) or value < 0:
            raise PrometheusError(
                f"Prometheus at {self.url} gave {value} for {expr!r}, not a finite non-negative number"
            )
        return value

    async def observe(self, settings: QuerySettings, namespace: str, name: str) -> Observation:
        """KV-cache usage and waiting requests per ready pod of one MiliDeployment (those held in front
        of the workers included)."""
        kv = await self.scalar(average_over_ready_pods(KV_CACHE_METRIC, settings, namespace, name))
        waiting = await self.scalar(average_over_ready_pods(WAITING_METRIC, settings, namespace, name))
        routed = await self.scalar(router_requests(settings, namespace, name))
        held = await self.scalar(held_requests(settings, namespace, name))
        ready = await self.scalar(ready_workers(settings, namespace, name)) if held else None
        return Observation(
            kv_cache_usage=kv,
            waiting_per_replica=waiting_per_replica(waiting, held, ready),
            router_requests=routed,
            held_requests=held,
        )
