"""The pure autoscaling decision: each rule of docs/architecture.md "Autoscaling", and flapping load."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import pytest

from mili.operator.autoscaling import (
    ACTIVE,
    METRICS_UNAVAILABLE,
    PROMETHEUS_UNAVAILABLE,
    Observation,
    Recommendation,
    decide,
    prune,
    scale_up_limit,
    waiting_per_replica,
)
from mili.operator.spec import AutoscalingSpec

SPEC = AutoscalingSpec(
    enabled=True,
    min_replicas=1,
    max_replicas=100,
    target_kv_cache_usage=0.7,
    target_queue_length=4.0,
    scale_up_stabilization_seconds=0,
    scale_down_stabilization_seconds=0,
)
NOW = 10_000.0


def seen(kv: float | None, queue: float | None = 0.0) -> Observation:
    return Observation(kv_cache_usage=kv, waiting_per_replica=queue)


@pytest.mark.parametrize(
    ("rule", "observation", "current", "replicas", "reason"),
    [
        # ratio = observed / target; outside 1 ± 0.1: ceil(current × ratio)
        ("kv above target", seen(0.91), 2, 3, "kv 0.91 > target 0.70 → 2→3"),
        ("kv below target", seen(0.2), 4, 2, "kv 0.20 < target 0.70 → 4→2"),
        ("queue above target", seen(0.1, 10.0), 2, 5, "queue 10.00 > target 4.00 → 2→5"),
        ("ceil, not round", seen(0.71 * 1.15), 4, 5, "kv 0.82 > target 0.70 → 4→5"),
        ("exact ratio does not overshoot", seen(0.7 * 1.5), 2, 3, "kv 1.05 > target 0.70 → 2→3"),
        # within the 10 % tolerance: keep
        ("just above, within tolerance", seen(0.76), 3, 3, "kv 0.76 ≈ target 0.70 → stays at 3"),
        ("just below, within tolerance", seen(0.64, 3.7), 3, 3, "queue 3.70 ≈ target 4.00 → stays at 3"),
        ("on target", seen(0.7), 3, 3, "kv 0.70 ≈ target 0.70 → stays at 3"),
        # the largest ratio decides, both ways
        ("queue outweighs idle kv", seen(0.0, 8.0), 2, 4, "queue 8.00 > target 4.00 → 2→4"),
        ("kv outweighs empty queue", seen(0.9, 0.0), 2, 3, "kv 0.90 > target 0.70 → 2→3"),
        ("busier metric keeps it from shrinking", seen(0.1, 4.0), 4, 4,
         "queue 4.00 ≈ target 4.00 → stays at 4"),
        ("both low: the larger ratio sets the floor", seen(0.35, 1.0), 4, 2, "kv 0.35 < target 0.70 → 4→2"),
        # scale-up step limit: max(2 × current, current + 4)
        ("+4 beats doubling from 1", seen(0.0, 40.0), 1, 5, "queue 40.00 > target 4.00 → 1→5 (wanted 10; "
         "scale-up limited to max(2×1, 1+4) = 5 per step)"),
        ("doubling beats +4 from 10", seen(0.0, 16.0), 10, 20,
         "queue 16.00 > target 4.00 → 10→20 (wanted 40; scale-up limited to max(2×10, 10+4) = 20 per step)"),
        # clamp to [min, max]
        ("never below minReplicas", seen(0.0, 0.0), 3, 1,
         "kv 0.00 < target 0.70 → 3→1 (wanted 0; minReplicas 1)"),
    ],
)  # fmt: skip
def test_rule(rule, observation, current, replicas, reason):
    decision = decide(observation, current, SPEC, (), NOW)
    assert (decision.replicas, decision.reason) == (replicas, reason), rule
    assert decision.active and decision.condition_reason == ACTIVE
    assert decision.direction == ("up" if replicas > current else "down" if replicas < current else "none")


def test_clamped_to_max_and_min_replicas_with_the_bound_named():
    bounded = replace(SPEC, min_replicas=2, max_replicas=4)
    up = decide(seen(1.0), 3, bounded, (), NOW)
    assert (up.replicas, up.reason) == (4, "kv 1.00 > target 0.70 → 3→4 (wanted 5; maxReplicas 4)")
    down = decide(seen(0.05), 4, bounded, (), NOW)
    assert (down.replicas, down.reason) == (2, "kv 0.05 < target 0.70 → 4→2 (wanted 1; minReplicas 2)")


def test_scale_up_limit():
    assert [scale_up_limit(n) for n in (0, 1, 2, 4, 5, 10)] == [4, 5, 6, 8, 10, 20]


def test_scale_down_waits_for_the_highest_recommendation_in_the_window():
    spec = replace(SPEC, scale_down_stabilization_seconds=300)
    history = (Recommendation(NOW - 290, 4), Recommendation(NOW - 100, 3), Recommendation(NOW - 20, 2))
    held = decide(seen(0.1), 4, spec, history, NOW)
    assert held.replicas == 4 and held.direction == "none"
    assert held.reason == (
        "kv 0.10 < target 0.70 → stays at 4 "
        "(wanted 1; scale-down stabilization: highest recommendation of the last 300s is 4)"
    )
    # 20 s later the 4 has left the window: down to the highest left (3), not to the raw 1.
    later = decide(seen(0.1), 4, spec, held.recommendations, NOW + 20)
    assert later.replicas == 3
    assert later.reason.startswith("kv 0.10 < target 0.70 → 4→3 (wanted 1; scale-down stabilization")


def test_scale_up_waits_for_the_lowest_recommendation_in_its_window():
    spec = replace(SPEC, scale_up_stabilization_seconds=60)
    history = (Recommendation(NOW - 50, 2), Recommendation(NOW - 10, 3))
    held = decide(seen(1.4), 2, spec, history, NOW)  # raw 4, but 2 was recommended 50 s ago
    assert held.replicas == 2
    assert "scale-up stabilization: lowest recommendation of the last 60s is 2" in held.reason
    later = decide(seen(1.4), 2, spec, held.recommendations, NOW + 15)  # the 2 expired; lowest is 3
    assert later.replicas == 3


def test_scale_up_is_immediate_with_the_default_zero_window_despite_a_long_down_window():
    spec = replace(SPEC, scale_down_stabilization_seconds=300)
    history = tuple(Recommendation(NOW - t, 2) for t in (200, 100, 15))
    assert decide(seen(0.95), 2, spec, history, NOW).replicas == 3


@pytest.mark.parametrize(
    ("observation", "condition_reason", "reason"),
    [
        (
            Observation.unavailable("Prometheus at http://p:9090 is unreachable: refused"),
            PROMETHEUS_UNAVAILABLE,
            "Prometheus at http://p:9090 is unreachable: refused → holding at 3",
        ),
        (seen(None, None), METRICS_UNAVAILABLE, "no samples for kv, queue → holding at 3"),
        (seen(0.95, None), METRICS_UNAVAILABLE, "no samples for queue → holding at 3"),
        (
            seen(math.nan, 2.0),
            PROMETHEUS_UNAVAILABLE,
            "samples that are not finite non-negative numbers: kv nan → holding at 3",
        ),
        (
            seen(0.5, math.inf),
            PROMETHEUS_UNAVAILABLE,
            "samples that are not finite non-negative numbers: queue inf → holding at 3",
        ),
        (
            seen(-0.5, None),
            PROMETHEUS_UNAVAILABLE,
            "samples that are not finite non-negative numbers: kv -0.5 → holding at 3",
        ),
    ],
)
def test_without_metrics_the_count_holds_and_scaling_goes_inactive(observation, condition_reason, reason):
    history = (Recommendation(NOW - 5, 3),)
    decision = decide(observation, 3, replace(SPEC, scale_down_stabilization_seconds=60), history, NOW)
    assert (decision.replicas, decision.reason) == (3, reason)
    assert not decision.active and decision.condition_reason == condition_reason
    assert decision.recommendations == history, "a round without metrics must not count as a recommendation"


def test_a_hold_still_respects_the_bounds():
    bounded = replace(SPEC, min_replicas=2, max_replicas=4)
    decision = decide(Observation.unavailable("down"), 6, bounded, (), NOW)
    assert (decision.replicas, decision.reason) == (4, "down → 6→4 (maxReplicas 4)")
    assert decide(Observation.unavailable("down"), 0, bounded, (), NOW).replicas == 2


def test_history_keeps_only_what_a_window_can_still_use():
    spec = replace(SPEC, scale_up_stabilization_seconds=30, scale_down_stabilization_seconds=120)
    history = (Recommendation(NOW - 200, 9), Recommendation(NOW - 119, 5), Recommendation(NOW - 1, 2))
    assert prune(history, spec, NOW) == history[1:]
    decision = decide(seen(0.7), 2, spec, history, NOW)
    assert decision.recommendations == (*history[1:], Recommendation(NOW, 2))


def kv_under_load(total_load: float, replicas: int) -> float:
    """KV usage per replica when ``total_load`` replicas' worth of KV is spread over ``replicas``."""
    return min(1.0, total_load / replicas)


def simulate(spec: AutoscalingSpec, loads: list[float], start: int, interval: float = 15.0) -> list[int]:
    """Replica counts over rounds where the load in each round is spread over the current replicas."""
    replicas, history, counts = start, (), []
    for step, load in enumerate(loads):
        decision = decide(seen(kv_under_load(load, replicas)), replicas, spec, history, step * interval)
        replicas, history = decision.replicas, decision.recommendations
        counts.append(replicas)
    return counts


def changes(counts: list[int]) -> int:
    return sum(1 for before, after in itertools.pairwise(counts) if before != after)


def test_flapping_load_does_not_flap_replicas():
    spec = replace(SPEC, max_replicas=8, scale_down_stabilization_seconds=300)
    # Load alternates every 15 s round between heavy and light, for 20 minutes.
    flapping = [2.0 if step % 2 == 0 else 0.4 for step in range(80)]
    counts = simulate(spec, flapping, start=2)
    assert counts[0] == 3, "the first heavy round scales up at once"
    assert set(counts) == {3} and changes([2, *counts]) == 1, counts

    # Once the load stays light, it comes down exactly once, a whole window after the last heavy round.
    settled = simulate(spec, flapping + [0.4] * 30, start=2)
    assert changes(settled) == 1
    first_down = settled.index(1)
    assert (first_down - 78) * 15 >= 300, "down only after the window from the last heavy round"


def test_without_a_down_window_the_same_load_would_flap():
    """The control for the test above: the window is what keeps replicas steady."""
    counts = simulate(replace(SPEC, max_replicas=8), [2.0 if step % 2 == 0 else 0.4 for step in range(20)], 2)
    assert changes(counts) >= 10


def test_steady_load_at_target_is_left_alone():
    spec = replace(SPEC, max_replicas=8, scale_down_stabilization_seconds=300)
    counts = simulate(spec, [2.0 + 0.05 * (-1) ** step for step in range(40)], start=3)
    assert set(counts) == {3}


# Scale from zero (minReplicas 0): requests at the router wake a MiliDeployment; idle goes to zero.
FROM_ZERO = replace(SPEC, min_replicas=0, max_replicas=4, scale_down_stabilization_seconds=300)


def test_a_request_waiting_at_zero_replicas_brings_one_worker():
    # No worker reports anything at zero: only the router saw the request.
    decision = decide(Observation(None, None, router_requests=1.0), 0, FROM_ZERO, (), NOW)
    assert (decision.replicas, decision.active, decision.direction) == (1, True, "up")
    assert "1 request(s) waiting at zero replicas" in decision.reason


def test_a_request_held_by_the_gateway_at_zero_replicas_brings_one_worker():
    # The gateway holds it without forwarding (the router has no worker): only its gauge saw it.
    decision = decide(Observation(None, None, router_requests=0.0, held_requests=2.0), 0, FROM_ZERO, (), NOW)
    assert (decision.replicas, decision.direction) == (1, "up")
    assert "2 request(s) waiting at zero replicas" in decision.reason


def test_a_long_scale_up_window_does_not_delay_the_wake_up():
    spec = replace(FROM_ZERO, scale_up_stabilization_seconds=600)
    history = (Recommendation(NOW - 10, 0),)
    assert decide(Observation(None, None, router_requests=3.0), 0, spec, history, NOW).replicas == 1


@pytest.mark.parametrize("quiet", [None, 0.0])
def test_zero_stays_zero_without_requests(quiet):
    observation = Observation(None, None, router_requests=quiet, held_requests=quiet)
    decision = decide(observation, 0, FROM_ZERO, (), NOW)
    assert (decision.replicas, decision.active) == (0, True)
    assert "no requests at zero replicas" in decision.reason


def test_at_zero_an_unreachable_prometheus_holds_and_minreplicas_one_lifts():
    assert decide(Observation.unavailable("down"), 0, FROM_ZERO, (), NOW).replicas == 0
    assert decide(Observation(None, None), 0, replace(FROM_ZERO, min_replicas=1), (), NOW).replicas == 1


def test_idle_goes_to_zero_only_after_the_scale_down_window():
    idle = Observation(kv_cache_usage=0.0, waiting_per_replica=0.0, router_requests=0.0)
    history = (Recommendation(NOW - 200, 1),)  # busy 200 s ago: inside the 300 s window
    assert decide(idle, 1, FROM_ZERO, history, NOW).replicas == 1
    history = (Recommendation(NOW - 301, 1),)  # the window has passed
    assert decide(idle, 1, FROM_ZERO, history, NOW).replicas == 0


# Requests held in front of the workers (the routers' holding step) count as waiting.
@pytest.mark.parametrize(
    ("worker_waiting", "held_requests", "ready", "expected"),
    [
        (2.0, None, 3.0, 2.0),  # no router reports: the workers' queue alone
        (2.0, 0.0, 3.0, 2.0),
        (2.0, 6.0, 3.0, 4.0),  # six held requests shared by three ready workers
        (0.0, 5.0, 1.0, 5.0),
        (1.0, 4.0, None, 5.0),  # ready count unknown: no division by an unknown
        (1.0, 4.0, 0.0, 5.0),
        (None, 6.0, 3.0, None),  # the workers report nothing: no signal (the decision holds)
    ],
)
def test_held_requests_are_shared_over_the_ready_workers(worker_waiting, held_requests, ready, expected):
    assert waiting_per_replica(worker_waiting, held_requests, ready) == expected


def test_requests_held_at_the_router_scale_up_like_a_worker_queue():
    waiting = waiting_per_replica(0.5, 14.0, 2.0)  # 0.5 + 7 per worker against a target of 4
    decision = decide(Observation(0.1, waiting, held_requests=14.0), 2, SPEC, (), NOW)
    assert decision.replicas == 4 and "queue 7.50 > target" in decision.reason


def test_a_request_held_at_zero_replicas_wakes_the_deployment():
    decision = decide(Observation(None, None, held_requests=1.0), 0, FROM_ZERO, (), NOW)
    assert (decision.replicas, decision.direction) == (1, "up")
