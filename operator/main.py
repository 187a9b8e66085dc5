"""`mili-operator`: run the Kopf operator with MILI's handler modules."""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Sequence

import kopf

from mili.operator import metrics
from mili.operator.config import OperatorConfig, parse_config

# Modules whose import registers Kopf handlers. A new concern (e.g. the autoscaler timer) is a new
# module added here, not a flag threaded through the existing handlers.
HANDLER_MODULES: tuple[str, ...] = ("mili.operator.handlers", "mili.operator.autoscaler_timer")

ANNOTATION_PREFIX = "mili.dev"


def load_handlers(modules: Sequence[str] = HANDLER_MODULES) -> None:
    for module in modules:
        importlib.import_module(module)


def build_settings(config: OperatorConfig) -> kopf.OperatorSettings:
    """Kopf settings: state in annotations (the CRD schema prunes unknown status fields), Events for
    warnings and explicit notices only, watches that reconnect regularly."""
    settings = kopf.OperatorSettings()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{ANNOTATION_PREFIX}/finalizer"
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "mili-operator"
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    return settings


async def run_operator(config: OperatorConfig, stop_flag: asyncio.Event | None = None) -> None:
    """Run until stopped (SIGINT/SIGTERM, or ``stop_flag``)."""
    await kopf.operator(
        clusterwide=config.all_namespaces,
        namespaces=config.namespaces,
        standalone=config.peering is None,
        peering_name=config.peering,
        liveness_endpoint=config.liveness_endpoint,
        settings=build_settings(config),
        memo=kopf.Memo(config=config),
        stop_flag=stop_flag,
    )


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(argv)
    kopf.configure(verbose=config.verbose, log_format=kopf.LogFormat.FULL, log_prefix=True)
    for noisy in ("httpx", "httpcore"):  # one line per API request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    load_handlers()
    metrics.serve(config.metrics_port)
    logging.getLogger(__name__).info(
        "Serving %s", "all namespaces" if config.all_namespaces else ", ".join(config.namespaces)
    )
    asyncio.run(run_operator(config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
