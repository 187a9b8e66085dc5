"""Operator-wide settings: command-line flags with environment-variable defaults."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_WORKER_IMAGE = "mili-worker:0.1.0"
DEFAULT_ROUTER_IMAGE = "mili-router:0.1.0"  # Dockerfile.operator's `router` target
DEFAULT_PROMETHEUS_URL = "http://prometheus.mili-system.svc:9090"
DEFAULT_OPERATOR_NAMESPACE = "mili-system"


@dataclass(frozen=True)
class OperatorConfig:
    """What the operator needs besides each MiliDeployment's own spec."""

    worker_image: str = DEFAULT_WORKER_IMAGE
    router_image: str = DEFAULT_ROUTER_IMAGE
    namespaces: tuple[str, ...] = ()
    all_namespaces: bool = False
    liveness_host: str = "0.0.0.0"
    liveness_port: int = 8080
    metrics_port: int = 8081  # 0 disables the operator's own /metrics
    prometheus_urls: tuple[str, ...] = (DEFAULT_PROMETHEUS_URL,)  # the allow-list; the first is the default
    peering: str | None = None  # None: standalone (one operator replica, no Kopf peering objects)
    operator_namespace: str = DEFAULT_OPERATOR_NAMESPACE  # may reach workers (their NetworkPolicy)
    verbose: bool = False

    @property
    def prometheus_url(self) -> str:
        """The Prometheus of MiliDeployments that name none."""
        return self.prometheus_urls[0]

    def allows_prometheus(self, url: str) -> bool:
        """Whether a MiliDeployment may have its metrics read from ``url`` (one of --prometheus-url)."""
        return url.rstrip("/") in {allowed.rstrip("/") for allowed in self.prometheus_urls}

    @property
    def liveness_endpoint(self) -> str | None:
        if not self.liveness_port:
            return None
        return f"http://{self.liveness_host}:{self.liveness_port}/healthz"


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mili-operator",
        description="Run the MILI operator: MiliDeployment -> worker Deployment + Service (+ autoscaling).",
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        dest="namespaces",
        action="append",
        default=None,
        help="serve MiliDeployments in this namespace (repeatable); env MILI_NAMESPACES, comma-separated",
    )
    scope.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        default=None,
        help="serve the whole cluster (the default)",
    )
    parser.add_argument(
        "--worker-image",
        default=os.environ.get("MILI_WORKER_IMAGE", DEFAULT_WORKER_IMAGE),
        help="image for workers whose spec has no `image` (env MILI_WORKER_IMAGE)",
    )
    parser.add_argument(
        "--router-image",
        default=os.environ.get("MILI_ROUTER_IMAGE", DEFAULT_ROUTER_IMAGE),
        help="image of the vllm-router in front of each MiliDeployment (env MILI_ROUTER_IMAGE)",
    )
    parser.add_argument(
        "--prometheus-url",
        dest="prometheus_urls",
        action="append",
        default=None,
        help="a Prometheus autoscaling may read (repeatable; the first is the default; a MiliDeployment's "
        "spec.autoscaling.prometheusUrl must be one of them); env MILI_PROMETHEUS_URL, comma-separated",
    )
    parser.add_argument(
        "--operator-namespace",
        default=os.environ.get("MILI_OPERATOR_NAMESPACE") or DEFAULT_OPERATOR_NAMESPACE,
        help="the operator's namespace, let through the workers' NetworkPolicy (env MILI_OPERATOR_NAMESPACE)",
    )
    parser.add_argument("--liveness-host", default=os.environ.get("MILI_LIVENESS_HOST", "0.0.0.0"))
    parser.add_argument(
        "--liveness-port",
        type=int,
        default=_env_int("MILI_LIVENESS_PORT", 8080),
        help="port of GET /healthz (0 disables)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=_env_int("MILI_METRICS_PORT", 8081),
        help="port of the operator's own GET /metrics (0 disables)",
    )
    parser.add_argument(
        "--peering",
        default=os.environ.get("MILI_PEERING") or None,
        help="Kopf peering object name for several operator replicas (default: standalone)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def parse_config(argv: Sequence[str] | None = None) -> OperatorConfig:
    """Build the config from ``argv`` (default: ``sys.argv[1:]``) and the environment."""
    args = build_parser().parse_args(argv)
    namespaces = tuple(args.namespaces or ())
    if not namespaces and not args.all_namespaces:
        namespaces = tuple(
            ns.strip() for ns in os.environ.get("MILI_NAMESPACES", "").split(",") if ns.strip()
        )
    prometheus_urls = tuple(args.prometheus_urls or ()) or tuple(
        url.strip() for url in os.environ.get("MILI_PROMETHEUS_URL", "").split(",") if url.strip()
    )
    return OperatorConfig(
        worker_image=args.worker_image,
        router_image=args.router_image,
        namespaces=namespaces,
        all_namespaces=not namespaces,
        liveness_host=args.liveness_host,
        liveness_port=args.liveness_port,
        metrics_port=args.metrics_port,
        prometheus_urls=prometheus_urls or (DEFAULT_PROMETHEUS_URL,),
        peering=args.peering,
        operator_namespace=args.operator_namespace,
        verbose=args.verbose,
    )
