"""The ``mili`` command: ``mili serve`` (the OpenAI-compatible server) and ``mili generate`` (one completion).

Flags are named like vLLM's. ``MILI_API_KEY`` in the environment sets ``--api-key`` (stripped of
surrounding whitespace; a key that is set but blank refuses to start).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence

from mili.common import settings
from mili.worker.config import EngineConfig
from mili.worker.server.limits import HealthLimits, ServerLimits

logger = logging.getLogger("mili.worker.cli")

DEFAULT_SHUTDOWN_TIMEOUT_S = 30.0
DEFAULT_LIMIT_CONCURRENCY = 4096  # connections + tasks before uvicorn answers 503 itself
DEFAULT_TIMEOUT_KEEP_ALIVE_S = 5.0  # idle keep-alive connections are closed after this


def _engine_arguments(parser: argparse.ArgumentParser) -> None:
    """The engine flags, one per setting of ``mili.common.settings`` (declared there, once)."""
    engine = parser.add_argument_group("engine")
    for setting in settings.engine_flags():
        setting.add_argument(engine)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mili", description="MILI worker: serve or run an LLM.")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the OpenAI-compatible HTTP server")
    _engine_arguments(serve)
    server = serve.add_argument_group("server")
    server.add_argument("--host", default="0.0.0.0")
    server.add_argument("--port", type=int, default=8000)
    server.add_argument(
        "--served-name", "--served-model-name", dest="served_name", default=None,
        help="the model name clients send (default: the model source)",
    )  # fmt: skip
    server.add_argument(
        "--api-key", default=os.environ.get("MILI_API_KEY"),
        help="require 'Authorization: Bearer KEY' on /v1 (default: $MILI_API_KEY)",
    )  # fmt: skip
    server.add_argument(
        "--shutdown-timeout", type=float, default=DEFAULT_SHUTDOWN_TIMEOUT_S,
        help="on SIGTERM, seconds to let in-flight requests finish before aborting them",
    )  # fmt: skip
    limits, health = ServerLimits(), HealthLimits()
    server.add_argument(
        "--max-queued-requests", type=int, default=limits.max_queued_requests,
        help="waiting requests beyond which new ones get 503 with Retry-After",
    )  # fmt: skip
    server.add_argument(
        "--max-request-bytes", type=int, default=limits.max_request_bytes,
        help="request bodies larger than this get 413 before they are parsed",
    )  # fmt: skip
    server.add_argument(
        "--health-max-failed-steps", type=int, default=health.max_failed_steps,
        help="/health is 503 after this many failed engine steps in a row",
    )  # fmt: skip
    server.add_argument(
        "--health-stall-timeout", type=float, default=health.stall_timeout_s,
        help="/health is 503 when requests are pending and no engine step ended for this many seconds",
    )  # fmt: skip
    server.add_argument(
        "--limit-concurrency", type=int, default=DEFAULT_LIMIT_CONCURRENCY,
        help="connections and tasks at once before uvicorn answers 503",
    )  # fmt: skip
    server.add_argument(
        "--timeout-keep-alive", type=float, default=DEFAULT_TIMEOUT_KEEP_ALIVE_S,
        help="seconds an idle keep-alive connection stays open",
    )  # fmt: skip
    server.add_argument(
        "--tool-call-parser", default=None,
        help="parse the model's tool calls for tool_choice 'auto' "
        "(hermes: Hermes, Qwen2.5, Qwen3; llama3_json: Llama 3.1+)",
    )  # fmt: skip
    server.add_argument(
        "--reasoning-parser", default=None,
        help="send the model's thinking as reasoning_content (qwen3: <think>...</think>)",
    )  # fmt: skip

    generate = commands.add_parser("generate", help="print one completion of PROMPT")
    generate.add_argument("prompt")
    _engine_arguments(generate)
    generate.add_argument("--max-tokens", type=int, default=128)
    generate.add_argument("--temperature", type=float, default=0.0)
    generate.add_argument(
        "--raw", action="store_true", help="complete PROMPT as is, without the chat template"
    )
    return parser


def engine_config(args: argparse.Namespace) -> EngineConfig:
    flags = {setting.name: getattr(args, setting.name) for setting in settings.engine_flags()}
    return EngineConfig(served_name=getattr(args, "served_name", None), **flags)


def server_limits(args: argparse.Namespace) -> ServerLimits:
    return ServerLimits(
        max_queued_requests=args.max_queued_requests,
        max_request_bytes=args.max_request_bytes,
        health=HealthLimits(
            max_failed_steps=args.health_max_failed_steps, stall_timeout_s=args.health_stall_timeout
        ),
    )


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from mili.worker.server import create_app
    from mili.worker.server.chat_choices import ChatOptions
    from mili.worker.server.drain import DrainingServer

    chat = ChatOptions(tool_call_parser=args.tool_call_parser, reasoning_parser=args.reasoning_parser)
    app = create_app(engine_config(args), api_key=args.api_key, limits=server_limits(args), chat=chat)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        # Draining happens before uvicorn's own shutdown (DrainingServer), so what is left then is cut short.
        timeout_graceful_shutdown=min(1.0, args.shutdown_timeout),
        limit_concurrency=args.limit_concurrency,
        timeout_keep_alive=args.timeout_keep_alive,
        access_log=args.log_level == "debug",
    )
    server = DrainingServer(config, app.state.mili, drain_timeout_s=args.shutdown_timeout)
    # uvicorn re-raises the signal that stopped it once it has shut down; with this handler in place
    # that is a no-op, so a SIGTERM'd server that drained cleanly exits 0 (what Kubernetes expects).
    signal.signal(signal.SIGTERM, lambda *_: logger.info("SIGTERM: shut down complete"))
    server.run()
    return 0 if server.started else 1


def generate(args: argparse.Namespace) -> int:
    from mili.worker.llm import LLM
    from mili.worker.sampling_params import SamplingParams

    config = engine_config(args)
    llm = LLM(**{field: getattr(config, field) for field in config.__dataclass_fields__})
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature)
    if args.raw:
        output = llm.generate(args.prompt, params)[0]
    else:
        output = llm.chat([{"role": "user", "content": args.prompt}], params)[0]
    print(output.outputs[0].text)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return serve(args) if args.command == "serve" else generate(args)
    except ValueError as error:  # bad flags the config refused: say which, no traceback
        print(f"mili: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
