"""The Grafana dashboard: its shape, and every query of it, variables filled in, against the real
Prometheus scraping real workers (Grafana itself can't be installed here; Prometheus answers its queries)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from integration.autoscaling.loopback import (
    DEPLOYMENT,
    NAMESPACE,
    ROOT,
    ROUTER_JOB,
    SERVED_NAME,
    pod_target,
    wait_until,
)
from integration.router.processes import Router

DASHBOARD = json.loads((ROOT / "dashboards" / "mili.json").read_text())
VARIABLES = {"namespace": NAMESPACE, "deployment": DEPLOYMENT, "model": re.escape(SERVED_NAME)}
GRAFANA_INTERVALS = {"__rate_interval": "30s", "__interval": "1s", "__range": "1m"}
REQUIRED_PANELS = {
    "Request rate",
    "Running and waiting requests",
    "KV-cache usage",
    "Time to first token",
    "Inter-token latency",
    "End-to-end latency",
    "Token throughput",
    "Prefix-cache hit ratio",
    "Preemptions",
    "Desired vs ready replicas",
    "Scaling decisions",
    "Router decisions per worker",
    "Router in-flight requests per worker",
    "Prefix-cache hit ratio per worker",
    "Requests held at the router",
    "Router prefix decisions",
}
# Series whose value is a real number once requests have been served (others may be NaN at times,
# e.g. a hit ratio over a window without prompts, or 0/0 quantiles).
MUST_BE_FINITE = {"Request rate", "Token throughput", "Running and waiting requests", "KV-cache usage"}


def fill(expr: str, values: dict[str, str]) -> str:
    """Substitute ``$name`` / ``${name}`` the way Grafana does (longest names first)."""
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    assert "$" not in expr, f"unfilled variable in {expr!r}"
    return expr


def panels() -> list[dict[str, Any]]:
    return [p for p in DASHBOARD["panels"] if p["type"] != "row"]


def targets() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of every panel."""
    return [(panel["title"], target["expr"]) for panel in panels() for target in panel["targets"]]


def worker_targets() -> list[tuple[str, str]]:
    """The queries over worker metrics (the operator's own may be empty where no operator runs)."""
    return [(title, expr) for title, expr in targets() if "mili_operator_" not in expr]


def test_dashboard_has_the_panels_and_variables_of_the_issue():
    assert {panel["title"] for panel in panels()} >= REQUIRED_PANELS
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    assert {"namespace", "deployment", "model"} <= set(variables)
    datasource = {"type": "prometheus", "uid": "${datasource}"}
    for panel in panels():
        assert panel["datasource"] == datasource, panel["title"]
        assert all(target["datasource"] == datasource for target in panel["targets"]), panel["title"]
    for title, expr in targets():
        if "mili_operator_scale_decisions_total" not in expr:  # that counter has no per-object labels
            assert '"$namespace"' in expr and '"$deployment"' in expr, (title, expr)


def test_panels_do_not_overlap():
    cells: dict[tuple[int, int], str] = {}
    for panel in DASHBOARD["panels"]:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
        assert grid["x"] + grid["w"] <= 24


def test_variable_queries_list_the_scraped_deployment(prometheus):
    found = {}
    for variable in DASHBOARD["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["definition"])
        assert match, variable["definition"]
        selector, label = fill(match.group(1), VARIABLES), match.group(2)
        found[variable["name"]] = prometheus.api(f"label/{label}/values", **{"match[]": selector})
    assert NAMESPACE in found["namespace"] and DEPLOYMENT in found["deployment"]
    assert found["model"] == [SERVED_NAME]


@pytest.fixture(scope="module")
def router(prometheus, workers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Router]:
    """The real vllm-router in front of both workers, scraped as the router job scrapes router pods."""
    log = tmp_path_factory.mktemp("dashboard-router") / "router.log"
    running = Router("127.0.0.1", [worker.url for worker in workers], log, "--policy", "cache_aware").start()
    address = running.metrics_url.removeprefix("http://").removesuffix("/metrics")
    prometheus.set_targets(
        ROUTER_JOB, [pod_target(address, f"{DEPLOYMENT}-router", app="mili-router", port_name="metrics")]
    )
    yield running
    prometheus.set_targets(ROUTER_JOB, [])
    running.stop()


def test_every_query_runs_and_worker_panels_show_data(prometheus, workers, router):
    # Some finished requests through the router (the default policy, cache_aware), so latencies, tokens,
    # rates and router decisions have samples.
    for _ in range(2 * len(workers)):
        body = {"model": SERVED_NAME, "prompt": "The quick brown fox", "max_tokens": 4}
        httpx.post(f"{router.url}/v1/completions", json=body, timeout=60).raise_for_status()

    values = {**VARIABLES, **GRAFANA_INTERVALS}
    for _, expr in targets():
        prometheus.query(fill(expr, values))  # fails the test on any error

    def empty_panels() -> list[str]:
        missing = []
        for title, expr in worker_targets():
            result = prometheus.query(fill(expr, values))
            finite = any(not math.isnan(float(series["value"][1])) for series in result)
            if not result or (title in MUST_BE_FINITE and not finite):
                missing.append(f"{title}: {expr}")
        return missing

    last: list[list[str]] = []

    def all_have_data() -> bool:
        last[:] = [empty_panels()]
        return not last[0]

    try:
        wait_until(all_have_data, "every worker panel to return data", timeout=30, interval=0.5)
    except pytest.fail.Exception:
        pytest.fail("worker panels without data:\n" + "\n".join(last[0]))
