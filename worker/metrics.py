"""The worker's Prometheus metrics: exactly the names, types and labels of DESIGN.md "Metrics".

One ``WorkerMetrics`` per server, on its own registry (so several servers can live in one process, as
in tests). The engine loop feeds it: ``observe_stats`` after every iteration with the engine's stats,
``observe_delta`` with every request delta (steps, aborts, failures); the server counts the requests it
refuses with ``observe_rejection``. Latencies come from the engine's ``RequestMetrics``
(``time.monotonic()`` stamps), so TTFT is measured from arrival.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from mili.worker.engine.llm_engine import EngineStats
from mili.worker.engine.outputs import RequestDelta

__all__ = ["CONTENT_TYPE_LATEST", "WorkerMetrics"]

# No `*_created` series: Prometheus would ingest each as an extra gauge, and the contract is exactly the
# metrics of DESIGN.md. (prometheus-client's switch is process-wide.)
disable_created_metrics()

# Buckets after vLLM's: fine at the low end where good latencies live, long tails for queued load.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0)  # fmt: skip
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
               0.4, 0.5, 0.75, 1.0, 2.5, 5.0)  # fmt: skip
REQUEST_LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                           60.0, 120.0, 240.0, 480.0)  # fmt: skip


@dataclass
class _Progress:
    """What the metrics have already counted for one in-flight request."""

    last_token_time: float | None = None
    first_token_seen: bool = False
    finish_reasons: set[str] = field(default_factory=set)


class WorkerMetrics:
    """Gauges, counters and histograms of one served model, labelled ``model_name``."""

    def __init__(self, model_name: str, registry: CollectorRegistry | None = None) -> None:
        self.model_name = model_name
        self.registry = registry if registry is not None else CollectorRegistry()
        labels = ["model_name"]

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, labels, registry=self.registry).labels(model_name)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, labels, registry=self.registry).labels(model_name)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=self.registry).labels(model_name)

        self.num_requests_running = gauge("mili_num_requests_running", "Sequences running on the engine.")
        self.num_requests_waiting = gauge("mili_num_requests_waiting", "Sequences waiting to be scheduled.")
        self.kv_cache_usage_ratio = gauge(
            "mili_kv_cache_usage_ratio", "Fraction of KV-cache blocks referenced by sequences (0..1)."
        )
        self.kv_cache_blocks = gauge("mili_kv_cache_blocks", "KV-cache capacity in blocks.")
        self.prompt_tokens = counter("mili_prompt_tokens", "Prompt tokens of requests that started.")
        self.generation_tokens = counter("mili_generation_tokens", "Tokens generated.")
        self.prefix_queried_tokens = counter(
            "mili_prefix_cache_queried_tokens", "Prompt tokens looked up in the prefix cache."
        )
        self.prefix_hit_tokens = counter(
            "mili_prefix_cache_hit_tokens", "Prompt tokens found in the prefix cache."
        )
        self.preemptions = counter(
            "mili_preemptions", "Sequences preempted (by recompute) for lack of KV blocks."
        )
        self._requests = Counter(
            "mili_requests", "Finished requests by finish reason.", ["model_name", "finish_reason"],
            registry=self.registry,
        )  # fmt: skip
        self._rejected = Counter(
            "mili_requests_rejected", "Requests refused before reaching the engine, by reason.",
            ["model_name", "reason"], registry=self.registry,
        )  # fmt: skip
        self.max_queued_requests = gauge(
            "mili_max_queued_requests", "Waiting requests beyond which new ones are refused (503)."
        )
        self.time_to_first_token = histogram(
            "mili_time_to_first_token_seconds",
            "Time from arrival to the first generated token.",
            TTFT_BUCKETS,
        )
        self.inter_token_latency = histogram(
            "mili_inter_token_latency_seconds", "Time between successive tokens of a request.", ITL_BUCKETS
        )
        self.e2e_request_latency = histogram(
            "mili_e2e_request_latency_seconds",
            "Time from arrival to the end of a request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.request_queue_time = histogram(
            "mili_request_queue_time_seconds",
            "Time from arrival to first scheduling.",
            REQUEST_LATENCY_BUCKETS,
        )
        self._kernel_backend = Gauge(
            "mili_kernel_backend_info",
            "1 for the kernel backend that serves, with why (requested, self_check_passed, ...).",
            ["model_name", "backend", "reason"],
            registry=self.registry,
        )
        self._progress: dict[str, _Progress] = {}
        self._counted = EngineStats(0, 0, 0.0, 0, 0, 0, 0)

    # --- feeding ------------------------------------------------------------------------------------
    def set_kernel_backend(self, backend: str, reason: str) -> None:
        """Name the kernel backend that serves (set once, after the engine has chosen and checked it)."""
        self._kernel_backend.clear()
        self._kernel_backend.labels(self.model_name, backend, reason).set(1)

    def set_baseline(self, stats: EngineStats) -> None:
        """Start the cumulative engine counters from ``stats`` (e.g. after the warm-up generation)."""
        self._counted = stats
        self.observe_stats(stats)

    def observe_stats(self, stats: EngineStats) -> None:
        """Set the gauges; advance the counters the engine keeps cumulatively."""
        self.num_requests_running.set(stats.num_running)
        self.num_requests_waiting.set(stats.num_waiting)
        self.kv_cache_usage_ratio.set(stats.kv_cache_usage)
        self.kv_cache_blocks.set(stats.num_kv_blocks)
        counted = self._counted
        self.preemptions.inc(max(0, stats.num_preemptions - counted.num_preemptions))
        self.prefix_queried_tokens.inc(max(0, stats.prefix_queried_tokens - counted.prefix_queried_tokens))
        self.prefix_hit_tokens.inc(max(0, stats.prefix_hit_tokens - counted.prefix_hit_tokens))
        self._counted = stats

    def observe_delta(self, delta: RequestDelta) -> None:
        """Count the tokens and latencies of one request's delta; count the request when it ends."""
        progress = self._progress.setdefault(delta.request_id, _Progress())
        timing = delta.metrics
        self.generation_tokens.inc(sum(len(sequence.token_ids) for sequence in delta.sequences))
        progress.finish_reasons.update(s.finish_reason for s in delta.sequences if s.finish_reason)
        if timing.first_token_time is not None and not progress.first_token_seen:
            progress.first_token_seen = True
            self.prompt_tokens.inc(delta.num_prompt_tokens)
            self.time_to_first_token.observe(timing.first_token_time - timing.arrival_time)
            if timing.first_scheduled_time is not None:
                self.request_queue_time.observe(timing.first_scheduled_time - timing.arrival_time)
        last = timing.last_token_time
        if last is not None and progress.last_token_time is not None and last > progress.last_token_time:
            self.inter_token_latency.observe(last - progress.last_token_time)
        progress.last_token_time = last
        if delta.finished:
            del self._progress[delta.request_id]
            reason = "error" if delta.error is not None else _request_finish_reason(progress.finish_reasons)
            self._requests.labels(self.model_name, reason).inc()
            end = timing.finished_time if timing.finished_time is not None else last
            if end is not None:
                self.e2e_request_latency.observe(max(0.0, end - timing.arrival_time))

    def observe_rejection(self, reason: str) -> None:
        """A request the server refused before the engine saw it (``queue_full``, ``body_too_large``, ...)."""
        self._rejected.labels(self.model_name, reason).inc()

    def requests_total(self, finish_reason: str) -> float:
        """Current value of ``mili_requests_total{finish_reason}`` (for tests and logs)."""
        labels = {"model_name": self.model_name, "finish_reason": finish_reason}
        return self.registry.get_sample_value("mili_requests_total", labels) or 0.0

    # --- exposition ---------------------------------------------------------------------------------
    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)


def _request_finish_reason(reasons: set[str]) -> str:
    """One reason per request: "error", "abort" or "length" if any of its samples ended so, else "stop"."""
    for reason in ("error", "abort", "length"):
        if reason in reasons:
            return reason
    return "stop"
