"""The autoscaler's PromQL and its settings (the queries run against a real Prometheus in
tests/integration/autoscaling/)."""

from __future__ import annotations

from mili.gateway.metrics import HELD_REQUESTS_METRIC
from mili.operator.prometheus_api import (
    QuerySettings,
    average_over_ready_pods,
    held_requests,
    pod_selector,
    ready_workers,
)


def test_queries_select_one_milideployment_by_the_default_labels():
    assert average_over_ready_pods("mili_kv_cache_usage_ratio", QuerySettings(), "prod", "chat") == (
        'avg(avg_over_time(mili_kv_cache_usage_ratio{namespace="prod",mili_deployment="chat"}[1m])'
        ' and on(instance) (up{namespace="prod",mili_deployment="chat"} == 1))'
    )


def test_label_names_window_and_timeout_come_from_the_environment():
    settings = QuerySettings.from_environment(
        {
            "MILI_PROMETHEUS_NAMESPACE_LABEL": "kubernetes_namespace",
            "MILI_PROMETHEUS_DEPLOYMENT_LABEL": "app",
            "MILI_AUTOSCALING_WINDOW": "30s",
            "MILI_PROMETHEUS_TIMEOUT": "2.5",
        }
    )
    assert settings == QuerySettings("kubernetes_namespace", "app", "30s", 2.5)
    assert QuerySettings.from_environment({}) == QuerySettings("namespace", "mili_deployment", "1m", 5.0)
    assert "[30s]" in average_over_ready_pods("m", settings, "a", "b")


def test_label_values_are_quoted_for_promql():
    assert (
        pod_selector(QuerySettings(), 'we"ird', "a\\b") == '{namespace="we\\"ird",mili_deployment="a\\\\b"}'
    )


def test_held_requests_are_summed_over_router_pods_and_shared_over_ready_workers():
    selector = '{namespace="prod",mili_deployment="chat"}'
    assert held_requests(QuerySettings(), "prod", "chat") == (
        f"sum(avg_over_time(mili_router_held_requests{selector}[1m]))"
    )
    assert HELD_REQUESTS_METRIC in held_requests(QuerySettings(), "prod", "chat")  # one name, both sides
    assert ready_workers(QuerySettings(), "prod", "chat") == (
        f"count(mili_num_requests_waiting{selector} and on(instance) (up{selector} == 1))"
    )
