"""Offline throughput: MILI's engine against Hugging Face transformers `generate` (same process), or
with ``--peer vllm`` against vLLM's CPU build (its own venv, run back to back on the same workload).

64 requests on SmolLM2-135M-Instruct, prompt lengths uniform in [32, 512], output lengths uniform in
[16, 256] (ignore_eos, greedy), seeded. transformers runs the same prompts in padded batches, each batch
generating up to its longest requested output; only the requested tokens count as output.

    .venv/bin/python tests/performance/bench_engine.py [--requests 64] [--hf-batch-size 16]
    .venv/bin/python tests/performance/bench_engine.py --peer vllm [--vllm-dtype bfloat16]

Both engines run with their defaults, except that vLLM's dtype is given (its CPU default is bf16).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _measure import measured, print_table

from mili.worker import LLM, SamplingParams
from mili.worker.model_source import DEFAULT_MODEL, resolve_model_source


def make_workload(num_requests: int, vocab: int, seed: int) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    return [
        ([rng.randrange(100, vocab) for _ in range(rng.randint(32, 512))], rng.randint(16, 256))
        for _ in range(num_requests)
    ]


def run_mili(model: str, workload: list[tuple[list[int], int]], **engine_args) -> tuple[int, float]:
    """Output tokens and mean time to first token (all requests arrive at once)."""
    llm = LLM(model=model, **engine_args)
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for _, n in workload]
    outputs = llm.generate([prompt for prompt, _ in workload], params)
    ttft = sum(o.metrics.first_token_time - o.metrics.arrival_time for o in outputs) / len(outputs)
    return sum(len(o.outputs[0].token_ids) for o in outputs), ttft


def run_transformers(model_dir: Path, workload: list[tuple[list[int], int]], batch_size: int) -> int:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    produced = 0
    for start in range(0, len(workload), batch_size):
        batch = workload[start : start + batch_size]
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
    return produced


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--hf-batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kv-cache-mib", type=int, default=2048)
    parser.add_argument("--peer", choices=["transformers", "vllm"], default="transformers")
    parser.add_argument("--vllm-dtype", default="bfloat16")
    args = parser.parse_args()
    model_dir = resolve_model_source(args.model)
    import json

    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    workload = make_workload(args.requests, vocab, args.seed)
    expected_tokens = sum(n for _, n in workload)
    prompt_tokens = sum(len(p) for p, _ in workload)
    print(f"{args.requests} requests, {prompt_tokens} prompt tokens, {expected_tokens} output tokens")

    with measured() as mili:
        mili_tokens, mili_ttft = run_mili(
            args.model, workload, cpu_kv_cache_bytes=args.kv_cache_mib * 2**20, max_num_batched_tokens=2048
        )
    if args.peer == "vllm":
        compare_vllm(model_dir, workload, args, mili, mili_tokens, mili_ttft)
        return
    with measured() as hf:
        hf_tokens = run_transformers(model_dir, workload, args.hf_batch_size)
    assert mili_tokens == hf_tokens == expected_tokens
    mili_rate, hf_rate = mili_tokens / mili.seconds, hf_tokens / hf.seconds
    print_table(
        ["engine", "seconds", "output tok/s", "peak RSS MiB", "vs transformers"],
        [
            ["transformers generate", hf.seconds, hf_rate, hf.peak_rss // 2**20, 1.0],
            ["MILI", mili.seconds, mili_rate, mili.peak_rss // 2**20, mili_rate / hf_rate],
        ],
    )


def compare_vllm(model_dir, workload, args, mili, mili_tokens: int, mili_ttft: float) -> None:
    from _vllm_peer import run_offline

    peer = run_offline(model_dir, workload, args.vllm_dtype, kv_cache_gib=max(1, args.kv_cache_mib // 1024))
    assert peer["output_tokens"] == mili_tokens, (peer["output_tokens"], mili_tokens)
    mili_rate, peer_rate = mili_tokens / mili.seconds, peer["output_tokens"] / peer["seconds"]
    peer_ttft = peer["mean_ttft"] if peer["mean_ttft"] is not None else "n/a"
    print_table(
        ["engine", "seconds", "output tok/s", "mean TTFT s", "peak RSS MiB", "vs vLLM"],
        [
            [
                f"vLLM CPU ({args.vllm_dtype})",
                peer["seconds"],
                peer_rate,
                peer_ttft,
                peer["peak_rss"] // 2**20,
                1.0,
            ],
            [
                "MILI (defaults)",
                mili.seconds,
                mili_rate,
                mili_ttft,
                mili.peak_rss // 2**20,
                mili_rate / peer_rate,
            ],
        ],
    )


if __name__ == "__main__":
    main()
