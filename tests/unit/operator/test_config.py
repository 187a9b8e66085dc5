"""Command-line and environment settings of `mili-operator`."""

from __future__ import annotations

import pytest

from mili.operator.config import DEFAULT_WORKER_IMAGE, parse_config
from mili.operator.main import build_settings


def test_defaults_serve_all_namespaces_with_health_and_metrics(monkeypatch):
    for name in ("MILI_NAMESPACES", "MILI_WORKER_IMAGE", "MILI_METRICS_PORT"):
        monkeypatch.delenv(name, raising=False)
    config = parse_config([])
    assert config.all_namespaces and config.namespaces == ()
    assert config.worker_image == DEFAULT_WORKER_IMAGE
    assert config.liveness_endpoint == "http://0.0.0.0:8080/healthz" and config.metrics_port == 8081


def test_namespaces_come_from_flags_or_the_environment(monkeypatch):
    assert parse_config(["-n", "a", "--namespace", "b"]).namespaces == ("a", "b")
    monkeypatch.setenv("MILI_NAMESPACES", "x, y")
    config = parse_config([])
    assert config.namespaces == ("x", "y") and not config.all_namespaces
    assert parse_config(["--all-namespaces"]).all_namespaces


def test_namespace_and_all_namespaces_exclude_each_other():
    with pytest.raises(SystemExit):
        parse_config(["-n", "a", "-A"])


def test_zero_liveness_port_disables_the_endpoint():
    assert parse_config(["--liveness-port", "0"]).liveness_endpoint is None


def test_kopf_keeps_its_state_in_mili_annotations():
    settings = build_settings(parse_config([]))
    assert settings.persistence.finalizer == "mili.dev/finalizer"
    assert settings.posting.reporting_component == "mili-operator"


def test_prometheus_urls_are_an_allow_list_whose_first_is_the_default(monkeypatch):
    monkeypatch.delenv("MILI_PROMETHEUS_URL", raising=False)
    config = parse_config(["--prometheus-url", "http://a:9090", "--prometheus-url", "http://b:9090/"])
    assert config.prometheus_url == "http://a:9090"
    assert config.allows_prometheus("http://b:9090") and config.allows_prometheus("http://a:9090/")
    assert not config.allows_prometheus("http://evil.example:9090")
    monkeypatch.setenv("MILI_PROMETHEUS_URL", "http://x:9090, http://y:9090")
    assert parse_config([]).prometheus_urls == ("http://x:9090", "http://y:9090")
    monkeypatch.delenv("MILI_PROMETHEUS_URL")
    assert parse_config([]).prometheus_urls == ("http://prometheus.mili-system.svc:9090",)


def test_a_prometheus_url_outside_the_allow_list_is_refused_naming_the_field():
    from mili.operator.spec import SpecError, check_prometheus_url, parse_spec

    config = parse_config(["--prometheus-url", "http://a:9090"])
    raw = {"autoscaling": {"enabled": True, "maxReplicas": 2, "prometheusUrl": "http://evil:9090"}}
    with pytest.raises(SpecError) as caught:
        check_prometheus_url(parse_spec("chat", raw), config.allows_prometheus)
    assert (
        caught.value.field == "spec.autoscaling.prometheusUrl" and "--prometheus-url" in caught.value.message
    )
    raw["autoscaling"]["prometheusUrl"] = "http://a:9090"
    check_prometheus_url(parse_spec("chat", raw), config.allows_prometheus)
