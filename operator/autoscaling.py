"""The autoscaling decision: a pure function of what Prometheus said, the current count, the spec,
the recent recommendations and the time.

The rules are the HorizontalPodAutoscaler's (docs/architecture.md "Autoscaling"):

1. per metric, ratio = observed / target; the largest ratio decides;
2. outside 1 ± 10 %, raw = ceil(current × ratio), else raw = current;
3. stabilization: scale up only to the lowest raw recommendation of the scale-up window, down only to
   the highest one of the scale-down window (the new one included);
4. scale up at most to max(2 × current, current + 4) per step;
5. clamp to [minReplicas, maxReplicas].

"Waiting" counts the requests held in front of the workers too (``waiting_per_replica``): those a
router holds for a worker are shared over the ready workers and added to the workers' own queues.

At zero replicas (``minReplicas: 0``) no worker reports anything; requests that reached the router
or wait in front of it decide instead (``wake_from_zero``): any in the window → one replica, none →
stay at zero.

Missing samples or an unreachable Prometheus keep the current count (clamped to the bounds only) and
make ``ScalingActive`` False; such a round records no recommendation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from mili.operator.spec import AutoscalingSpec

TOLERANCE = 0.1
# Guards ceil() against a product like 3 × (0.7 / 0.7) = 3.0000000000000004.
_EPSILON = 1e-9

KV_CACHE = "kv"
QUEUE = "queue"

# ScalingActive condition reasons.
ACTIVE = "MetricsAvailable"
PROMETHEUS_UNAVAILABLE = "PrometheusUnavailable"
METRICS_UNAVAILABLE = "MetricsUnavailable"


@dataclass(frozen=True)
class Observation:
    """What Prometheus reported for one MiliDeployment's ready pods, each averaged over the window.

    ``None`` for a metric without samples; ``error`` when Prometheus could not be asked at all.
    """

    kv_cache_usage: float | None
    waiting_per_replica: float | None
    error: str | None = None
    # Requests that reached the router in the window, including those waiting there for a worker;
    # None without a router (or before its first request).
    router_requests: float | None = None
    # Requests the router pods' gateways hold for a worker (mili.gateway), averaged over the window and
    # summed over the router pods; None without a router.
    held_requests: float | None = None

    @classmethod
    def unavailable(cls, error: str) -> Observation:
        return cls(None, None, error)


@dataclass(frozen=True)
class Recommendation:
    """A raw recommendation (before stabilization, limits and bounds) made at ``time`` (seconds)."""

    time: float
    replicas: int


@dataclass(frozen=True)
class Decision:
    """The outcome of one round: the count to run and why, plus the history to pass to the next round."""

    current: int
    replicas: int
    reason: str
    active: bool  # the ScalingActive condition
    condition_reason: str
    recommendations: tuple[Recommendation, ...]

    @property
    def direction(self) -> str:
        """``up``, ``down`` or ``none`` (the label of ``mili_operator_scale_decisions_total``)."""
        if self.replicas > self.current:
            return "up"
        if self.replicas < self.current:
            return "down"
        return "none"


def waiting_per_replica(
    worker_waiting: float | None, held_requests: float | None, ready_workers: float | None
) -> float | None:
    """Requests waiting per ready worker: the workers' own queue (already an average per pod) plus the
    requests held in front of them, shared over the ready workers. None when no worker reports (the
    decision then holds); a router that reports nothing holds nothing."""
    if worker_waiting is None:
        return None
    if not held_requests:
        return worker_waiting
    return worker_waiting + held_requests / max(ready_workers or 1.0, 1.0)


def scale_up_limit(current: int) -> int:
    """The most replicas one step may reach from ``current``: max(2 × current, current + 4)."""
    return max(2 * current, current + 4)


def decide(
    observation: Observation,
    current: int,
    spec: AutoscalingSpec,
    history: Sequence[Recommendation],
    now: float,
) -> Decision:
    """How many replicas to run now, and why (see the module docstring for the rules)."""
    history = prune(history, spec, now)
    if observation.error is not None:
        return _hold(current, spec, history, PROMETHEUS_UNAVAILABLE, observation.error)
    if current == 0:
        return wake_from_zero(observation, spec, history, now)
    samples = ((KV_CACHE, observation.kv_cache_usage), (QUEUE, observation.waiting_per_replica))
    invalid = [f"{name} {value}" for name, value in samples if value is not None and not _is_usable(value)]
    if invalid:  # the client refuses these already; the rule must not crash on them either
        why = f"samples that are not finite non-negative numbers: {', '.join(invalid)}"
        return _hold(current, spec, history, PROMETHEUS_UNAVAILABLE, why)
    missing = [name for name, value in samples if value is None]
    if missing:
        return _hold(current, spec, history, METRICS_UNAVAILABLE, f"no samples for {', '.join(missing)}")

    observed = {KV_CACHE: observation.kv_cache_usage, QUEUE: observation.waiting_per_replica}
    targets = {KV_CACHE: spec.target_kv_cache_usage, QUEUE: spec.target_queue_length}
    ratios = {name: observed[name] / targets[name] for name in observed}
    driver = max(ratios, key=lambda name: ratios[name])  # ties: kv first
    ratio = ratios[driver]
    raw = current if abs(ratio - 1.0) <= TOLERANCE else math.ceil(current * ratio - _EPSILON)

    recommendations = (*history, Recommendation(now, raw))
    stabilized, window_note = _stabilize(current, raw, recommendations, spec, now)
    limited = min(stabilized, scale_up_limit(current)) if stabilized > current else stabilized
    replicas = spec.clamp(limited)

    notes = [window_note] if window_note else []
    if limited != stabilized:
        notes.append(f"scale-up limited to max(2×{current}, {current}+4) = {limited} per step")
    if replicas != limited:
        notes.append(_bound_note(replicas, spec))
    phrase = _describe(driver, observed[driver], targets[driver], ratio)
    return Decision(
        current=current,
        replicas=replicas,
        reason=_with_outcome(phrase, current, replicas, raw, notes),
        active=True,
        condition_reason=ACTIVE,
        recommendations=recommendations,
    )


def wake_from_zero(
    observation: Observation, spec: AutoscalingSpec, history: Sequence[Recommendation], now: float
) -> Decision:
    """At zero replicas: one replica as soon as a request waits (at the router or a worker), else zero.

    Scaling up from zero ignores the scale-up window: a waiting request has a cold start ahead of it
    already (``coldStartTimeoutSeconds``)."""
    signals = (observation.router_requests, observation.held_requests, observation.waiting_per_replica)
    demand = [value for value in signals if value]
    if any(not _is_usable(value) for value in demand):
        return _hold(0, spec, tuple(history), PROMETHEUS_UNAVAILABLE, f"unusable samples {demand}")
    replicas = spec.clamp(1 if demand else 0)
    if demand:
        phrase = f"{sum(demand):g} request(s) waiting at zero replicas"
    else:
        phrase = "no requests at zero replicas"
    return Decision(
        current=0,
        replicas=replicas,
        reason=_with_outcome(phrase, 0, replicas, replicas, []),
        active=True,
        condition_reason=ACTIVE,
        recommendations=(*history, Recommendation(now, replicas)),
    )


def _is_usable(value: float) -> bool:
    return math.isfinite(value) and value >= 0


def prune(history: Sequence[Recommendation], spec: AutoscalingSpec, now: float) -> tuple[Recommendation, ...]:
    """The recommendations still inside a stabilization window."""
    horizon = now - max(spec.scale_up_stabilization_seconds, spec.scale_down_stabilization_seconds)
    return tuple(r for r in history if r.time > horizon)


def _stabilize(
    current: int,
    raw: int,
    recommendations: Sequence[Recommendation],
    spec: AutoscalingSpec,
    now: float,
) -> tuple[int, str]:
    """The HPA's stabilization: (recommendation, note when a window held the raw one back)."""
    up_cutoff = now - spec.scale_up_stabilization_seconds
    down_cutoff = now - spec.scale_down_stabilization_seconds
    # The newest recommendation (time == now) always counts, even with a zero window.
    lowest = min(r.replicas for r in recommendations if r.time > up_cutoff or r.time >= now)
    highest = max(r.replicas for r in recommendations if r.time > down_cutoff or r.time >= now)
    if current < lowest:
        stabilized = lowest
    elif current > highest:
        stabilized = highest
    else:
        stabilized = current
    if raw > current and stabilized < raw:
        window = spec.scale_up_stabilization_seconds
        return stabilized, f"scale-up stabilization: lowest recommendation of the last {window}s is {lowest}"
    if raw < current and stabilized > raw:
        window = spec.scale_down_stabilization_seconds
        return (
            stabilized,
            f"scale-down stabilization: highest recommendation of the last {window}s is {highest}",
        )
    return stabilized, ""


def _hold(
    current: int,
    spec: AutoscalingSpec,
    history: tuple[Recommendation, ...],
    condition_reason: str,
    why: str,
) -> Decision:
    """Keep the current count (only brought within the spec's bounds) when the metrics can't be trusted."""
    replicas = spec.clamp(current)
    if replicas == current:
        outcome = f"holding at {current}"
    else:
        outcome = f"{current}→{replicas} ({_bound_note(replicas, spec)})"
    return Decision(
        current=current,
        replicas=replicas,
        reason=f"{why} → {outcome}",
        active=False,
        condition_reason=condition_reason,
        recommendations=history,
    )


def _describe(metric: str, value: float, target: float, ratio: float) -> str:
    """E.g. ``kv 0.91 > target 0.70`` (``≈`` within the tolerance)."""
    if ratio > 1.0 + TOLERANCE:
        sign = ">"
    elif ratio < 1.0 - TOLERANCE:
        sign = "<"
    else:
        sign = "≈"
    return f"{metric} {value:.2f} {sign} target {target:.2f}"


def _bound_note(replicas: int, spec: AutoscalingSpec) -> str:
    if replicas == spec.min_replicas:
        return f"minReplicas {spec.min_replicas}"
    return f"maxReplicas {spec.max_replicas}"


def _with_outcome(phrase: str, current: int, replicas: int, raw: int, notes: list[str]) -> str:
    """``PHRASE → 2→3``, or ``PHRASE → stays at 2``, with what held the raw recommendation back."""
    outcome = f"{current}→{replicas}" if replicas != current else f"stays at {current}"
    if raw != replicas:
        notes = [f"wanted {raw}", *notes]
    return f"{phrase} → {outcome}" + (f" ({'; '.join(notes)})" if notes else "")
