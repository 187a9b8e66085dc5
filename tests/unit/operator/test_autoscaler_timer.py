"""The pure parts of the autoscaler's daemon: what it writes into status.autoscaling and ScalingActive."""

from __future__ import annotations

from mili.operator.autoscaler_timer import autoscaling_status, interval_seconds, scaling_condition
from mili.operator.autoscaling import Decision, Observation


def decision(current: int, replicas: int, reason: str, active: bool = True) -> Decision:
    return Decision(
        current, replicas, reason, active, "MetricsAvailable" if active else "PrometheusUnavailable", ()
    )


def test_a_change_records_the_metrics_the_decision_and_a_history_entry():
    status = autoscaling_status(
        {}, decision(2, 3, "kv 0.91 > target 0.70 → 2→3"), Observation(0.9123, 1.25), "T1"
    )
    entry = {"time": "T1", "from": 2, "to": 3, "reason": "kv 0.91 > target 0.70 → 2→3"}
    assert status == {
        "kvCacheUsage": 0.912,
        "queueLength": 1.25,
        "lastDecision": entry,
        "lastScaleTime": "T1",
        "history": [entry],
    }


def test_history_keeps_the_last_five_changes():
    status: dict = {}
    for step in range(7):
        status = autoscaling_status(
            status, decision(step, step + 1, f"up {step}"), Observation(0.9, 0), f"T{step}"
        )
    assert [entry["reason"] for entry in status["history"]] == [f"up {step}" for step in range(2, 7)]
    assert status["lastScaleTime"] == "T6"


def test_an_unchanged_decision_keeps_its_time_so_an_idle_object_is_not_rewritten():
    hold = decision(2, 2, "kv 0.00 < target 0.70 → stays at 2 (wanted 1; ...)")
    first = autoscaling_status({}, hold, Observation(0.0, 0.0), "T1")
    again = autoscaling_status(first, hold, Observation(0.0, 0.0), "T2")
    assert again == first and "history" not in again and "lastScaleTime" not in again


def test_without_samples_the_metrics_are_dropped_and_scaling_is_inactive():
    previous = {"kvCacheUsage": 0.5, "queueLength": 2.0, "lastScaleTime": "T0", "history": [{"to": 2}]}
    hold = decision(2, 2, "Prometheus at http://p is unreachable → holding at 2", active=False)
    status = autoscaling_status(previous, hold, Observation.unavailable("unreachable"), "T1")
    assert "kvCacheUsage" not in status and "queueLength" not in status
    assert status["history"] == [{"to": 2}] and status["lastScaleTime"] == "T0"
    condition = scaling_condition(hold, "http://p")
    assert (condition.status, condition.reason, condition.message) == (
        "False",
        "PrometheusUnavailable",
        hold.reason,
    )
    active = scaling_condition(decision(2, 3, "x"), "http://p")
    assert (active.status, active.reason) == ("True", "MetricsAvailable") and "http://p" in active.message


def test_interval_comes_from_the_spec():
    assert interval_seconds({"autoscaling": {"intervalSeconds": 2}}) == 2
    assert interval_seconds({"autoscaling": {}}) == 15 and interval_seconds({}) == 15
