"""The ``mili`` command: ``mili serve`` (the OpenAI-compatible server) and ``mili generate`` (one completion).

Flags are named like vLLM's. ``MILI_API_KEY`` in the environment sets ``--api-key``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence

from mili.kernels import KERNEL_CHOICES
from mili.worker.config import DTYPE_CHOICES, EngineConfig
from mili.worker.model_source import DEFAULT_MODEL

logger = logging.getLogger("mili.worker.cli")

DEFAULT_SHUTDOWN_TIMEOUT_S = 30.0


def _engine_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = EngineConfig.__dataclass_fields__
    engine = parser.add_argument_group("engine")
    engine.add_argument("--model", default=DEFAULT_MODEL, help=f"model source (default {DEFAULT_MODEL})")
    engine.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto")
    engine.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    engine.add_argument(
        "--max-model-len", type=int, default=None, help="context limit (default: the model's)"
    )
    engine.add_argument("--block-size", type=int, default=defaults["block_size"].default)
    engine.add_argument("--max-num-seqs", type=int, default=defaults["max_num_seqs"].default)
    engine.add_argument(
        "--max-num-batched-tokens", type=int, default=defaults["max_num_batched_tokens"].default
    )
    engine.add_argument(
        "--gpu-memory-utilization", type=float, default=defaults["gpu_memory_utilization"].default
    )
    engine.add_argument("--num-kv-blocks", type=int, default=None, help="fix the KV pool size in blocks")
    engine.add_argument(
        "--no-prefix-caching",
        dest="prefix_caching",
        action="store_false",
        help="disable the radix prefix cache",
    )
    engine.add_argument("--kernels", choices=KERNEL_CHOICES, default="auto")
    engine.add_argument("--seed", type=int, default=0)
    engine.add_argument(
        "--kv-events-endpoint",
        default=None,
        help="publish KV-cache events (vLLM's format) on this ZMQ PUB address, e.g. tcp://*:5557",
    )


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
        "--api-key", default=os.environ.get("MILI_API_KEY") or None,
        help="require 'Authorization: Bearer KEY' on /v1 (default: $MILI_API_KEY)",
    )  # fmt: skip
    server.add_argument(
        "--shutdown-timeout", type=float, default=DEFAULT_SHUTDOWN_TIMEOUT_S,
        help="on SIGTERM, seconds to let in-flight requests finish before aborting them",
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
    return EngineConfig(
        model=args.model,
        served_name=getattr(args, "served_name", None),
        dtype=args.dtype,
        device=args.device,
        max_model_len=args.max_model_len,
        block_size=args.block_size,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        gpu_memory_utilization=args.gpu_memory_utilization,
        num_kv_blocks=args.num_kv_blocks,
        prefix_caching=args.prefix_caching,
        kernels=args.kernels,
        seed=args.seed,
        kv_events_endpoint=args.kv_events_endpoint,
    )


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from mili.worker.server import create_app

    app = create_app(engine_config(args), api_key=args.api_key)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=args.shutdown_timeout,
        access_log=args.log_level == "debug",
    )
    server = uvicorn.Server(config)
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
