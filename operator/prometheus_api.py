"""A thin async client of Prometheus's HTTP API, and the PromQL the autoscaler asks.

The queries select one MiliDeployment's worker pods by the labels the shipped scrape config attaches
(``namespace`` and ``mili_deployment`` by default; see manifests/prometheus/) and keep only targets
that are up now, so a pod that left within the window does not count (the scrape config itself only
keeps ready pods). Each metric is averaged over the window per pod, then across pods.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from mili.operator.autoscaling import Observation

KV_CACHE_METRIC = "mili_kv_cache_usage_ratio"
WAITING_METRIC = "mili_num_requests_waiting"


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
        """The instant vector of ``expr`` now: ``[{"metric": {...}, "value": [ts, "1.5"]}, ...]``."""
        try:
            response = await self._http.get("/api/v1/query", params={"query": expr})
        except httpx.TimeoutException as error:
            raise PrometheusError(f"Prometheus at {self.url} timed out ({type(error).__name__})") from error
        except httpx.HTTPError as error:
            raise PrometheusError(
                f"Prometheus at {self.url} is unreachable: {error or type(error).__name__}"
            ) from error
        try:
            payload = response.json()
        except ValueError as error:
            raise PrometheusError(
                f"Prometheus at {self.url} answered {response.status_code} without JSON to {expr!r}"
            ) from error
        if not isinstance(payload, dict):
            raise PrometheusError(
                f"Prometheus at {self.url} answered {response.status_code} with {payload!r}"
            )
        if payload.get("status") != "success":
            kind = payload.get("errorType", response.status_code)
            raise PrometheusError(
                f"Prometheus at {self.url} refused {expr!r}: {kind}: {payload.get('error', 'no message')}"
            )
        data = payload.get("data") or {}
        if data.get("resultType") != "vector":
            raise PrometheusError(f"{expr!r} gave a {data.get('resultType')}, not an instant vector")
        return data.get("result") or []

    async def scalar(self, expr: str) -> float | None:
        """The single value of ``expr``; None when it has no samples (or only NaN)."""
        result = await self.query(expr)
        if not result:
            return None
        if len(result) > 1:
            raise PrometheusError(f"{expr!r} gave {len(result)} series, expected one")
        value = float(result[0]["value"][1])
        return None if math.isnan(value) else value

    async def observe(self, settings: QuerySettings, namespace: str, name: str) -> Observation:
        """KV-cache usage and waiting requests per ready pod of one MiliDeployment."""
        kv = await self.scalar(average_over_ready_pods(KV_CACHE_METRIC, settings, namespace, name))
        waiting = await self.scalar(average_over_ready_pods(WAITING_METRIC, settings, namespace, name))
        return Observation(kv_cache_usage=kv, waiting_per_replica=waiting)
