"""Offline throughput: MILI's engine against Hugging Face transformers `generate` (same process), or
with ``--peer vllm`` against vLLM's CPU build (its own venv, run back to back on the same workload).

64 requests on SmolLM2-135M-Instruct, prompt lengths uniform in [32, 512], output lengths uniform in
[16, 256] (ignore_eos, greedy), seeded. transformers runs the same prompts in padded batches, each batch
generating up to its longest requested output; only the requested tokens count as output.

    .venv/bin/python tests/performance/bench_engine.py [--requests 64] [--hf-batch-size 16]
    .venv/bin/python tests/performance/bench_engine.py --peer vllm [--vllm-dtype bfloat16]

Both engines run with their defaults, except that vLLM's dtype is given (its CPU default is bf16) and
both get the same KV pool (``--kv-cache-gib``) and token budget (2,048). The peer runs first, MILI
second. Seconds are those of the timed generate (after loading and a warm-up); peak RSS covers the
engine's whole process tree from before loading to the end. Exits 2, saying why, when the peer cannot
run here.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _measure import EngineRun, PeakTreeRss, print_table, ratio
from _vllm_peer import PeerUnavailable, run_offline

from mili.worker import LLM, SamplingParams
from mili.worker.model_source import DEFAULT_MODEL, resolve_model_source


def make_workload(num_requests: int, vocab: int, seed: int) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    return [
        ([rng.randrange(100, vocab) for _ in range(rng.randint(32, 512))], rng.randint(16, 256))
        for _ in range(num_requests)
    ]


def run_mili(
    model: str, workload: list[tuple[list[int], int]], warmup_prompt: list[int], **engine_args
) -> EngineRun:
    """All requests at once through MILI's offline `LLM` (defaults plus ``engine_args``), after a
    one-token warm-up on ``warmup_prompt``, as the peer does."""
    memory = PeakTreeRss().start()
    llm = LLM(model=model, **engine_args)
    llm.generate([warmup_prompt], SamplingParams(max_tokens=1))
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for _, n in workload]
    start = time.perf_counter()
    outputs = llm.generate([prompt for prompt, _ in workload], params)
    seconds = time.perf_counter() - start
    return EngineRun(
        seconds=seconds,
        output_tokens=sum(len(o.outputs[0].token_ids) for o in outputs),
        ttfts=[o.metrics.first_token_time - o.metrics.arrival_time for o in outputs],
        cached_tokens=sum(o.metrics.num_cached_tokens for o in outputs),
        peak_rss=memory.stop(),
    )


def run_transformers(model_dir: Path, workload: list[tuple[list[int], int]], batch_size: int) -> EngineRun:
    import transformers

    memory = PeakTreeRss().start()
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    produced = 0
    start = time.perf_counter()
    for first in range(0, len(workload), batch_size):
        batch = workload[first : first + batch_size]
        width = max(len(prompt) for prompt, _ in batch)
        input_ids = torch.zeros(len(batch), width, dtype=torch.long)
        attention_mask = torch.zeros(len(batch), width, dtype=torch.long)
        for row, (prompt, _) in enumerate(batch):  # left padding, as generation wants
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
            attention_mask[row, width - len(prompt) :] = 1
        longest = max(n for _, n in batch)
        with torch.inference_mode():
            model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=longest,
                min_new_tokens=longest,
                do_sample=False,
                pad_token_id=0,
            )
        produced += sum(n for _, n in batch)
    seconds = time.perf_counter() - start
    return EngineRun(seconds, produced, [], 0, memory.stop())


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--hf-batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kv-cache-gib", type=int, default=2, help="KV pool of each engine")
    parser.add_argument("--peer", choices=["transformers", "vllm"], default="transformers")
    parser.add_argument("--vllm-dtype", default="bfloat16")
    args = parser.parse_args()
    model_dir = resolve_model_source(args.model)
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    workload = make_workload(args.requests, vocab, args.seed)
    expected_tokens = sum(n for _, n in workload)
    prompt_tokens = sum(len(p) for p, _ in workload)
    print(f"{args.requests} requests, {prompt_tokens} prompt tokens, {expected_tokens} output tokens")

    if args.peer == "vllm":
        try:
            peer = run_offline(
                model_dir, workload, args.vllm_dtype, workload[0][0], kv_cache_gib=args.kv_cache_gib
            )
        except PeerUnavailable as reason:
            print(f"vLLM peer unavailable: {reason}", file=sys.stderr)
            return 2
        peer_name = f"vLLM CPU ({args.vllm_dtype})"
    else:
        peer = run_transformers(model_dir, workload, args.hf_batch_size)
        peer_name = "transformers generate (float32)"
    mili = run_mili(
        args.model,
        workload,
        workload[0][0],
        cpu_kv_cache_bytes=args.kv_cache_gib * 2**30,
        max_num_batched_tokens=2048,
    )
    assert mili.output_tokens == peer.output_tokens == expected_tokens, (
        mili.output_tokens,
        peer.output_tokens,
    )
    print_table(
        ["engine", "seconds", "output tok/s", "mean TTFT s", "peak RSS MiB"],
        [engine_row(peer_name, peer), engine_row("MILI (defaults)", mili)],
    )
    print_table(
        ["MILI / peer", "output tok/s", "mean TTFT", "peak RSS"],
        [["ratio", ratio(mili.throughput, peer.throughput), ratio(mili.mean_ttft, peer.mean_ttft),
          ratio(mili.peak_rss, peer.peak_rss)]],
    )  # fmt: skip
    return 0


def engine_row(name: str, run: EngineRun) -> list[object]:
    ttft = run.mean_ttft if run.mean_ttft is not None else "n/a"
    return [name, run.seconds, run.throughput, ttft, run.peak_rss // 2**20]


if __name__ == "__main__":
    sys.exit(main())
