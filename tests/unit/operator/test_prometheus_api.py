"""The autoscaler's PromQL and its settings (the queries run against a real Prometheus in
tests/integration/autoscaling/)."""

from __future__ import annotations

from mili.gateway.metrics import HELD_REQUESTS_METRIC
from mili.operator.prometheus_api import QuerySettings, average_over_ready_pods, held_requests, pod_selector


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


def test_requests_held_by_the_gateways_are_the_peak_of_the_window_summed_over_router_pods():
    assert held_requests(QuerySettings(), "prod", "chat") == (
        'sum(max_over_time(mili_router_held_requests{namespace="prod",mili_deployment="chat"}[1m]))'
    )
    assert HELD_REQUESTS_METRIC in held_requests(QuerySettings(), "prod", "chat")  # one name, both sides
