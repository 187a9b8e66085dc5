"""tests/performance/gpu_check.py: its dry run passes on CPU through every code path of the real run,
and every random draw in it is bound to the check's device (the bug class that a CPU-only dry run
would otherwise hide: a CUDA generator handed to a CPU-tensor factory)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "tests" / "performance" / "gpu_check.py"
RANDOM_FACTORIES = {"randn", "randint", "randperm", "rand", "normal", "exponential_", "bernoulli"}
DRAW_HELPERS = {"randn", "randint", "randperm"}


def calls_in(function: ast.AST):
    for node in ast.walk(function):
        if isinstance(node, ast.Call):
            yield node


def name_of(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def test_random_draws_happen_only_in_the_device_bound_helpers() -> None:
    tree = ast.parse(SCRIPT.read_text())
    functions = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
    for function in functions:
        for call in calls_in(function):
            is_torch = isinstance(call.func, ast.Attribute) and getattr(call.func.value, "id", "") == "torch"
            if not (is_torch and name_of(call) in RANDOM_FACTORIES):
                continue
            keywords = {k.arg for k in call.keywords}
            where = f"{function.name}, line {call.lineno}"
            assert function.name in DRAW_HELPERS, f"torch.{name_of(call)} outside the draw helpers ({where})"
            assert {"generator", "device"} <= keywords, f"draw without generator= and device= ({where})"


def test_dry_run_passes_every_step_on_cpu(tmp_path: Path) -> None:
    env = {**os.environ, "MILI_CACHE_DIR": str(tmp_path / "cache")}
    for extra in (["--sanitizer-smoke"], []):
        result = subprocess.run(
            [sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path), *extra],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
            env=env,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["failed"] == []
    passed = " ".join(report["passed"])
    steps = ["rms_norm", "per-head 3-D", "gqa8", "decode float32", "peaky", "prefill", "start-up self-check"]
    fused = ["fused_add_rms_norm", "qk_norm_rotary bfloat16 qwen3-8b qwen3 norm", "qk_norm_rotary float32"]
    for step in [
        *steps,
        *fused,
        "graphs == eager",
        "kernel benchmark",
        "launch overhead",
        "engine benchmark",
    ]:
        assert step in passed, step
    assert report["skipped"] == []
    assert {"fused_add_rms_norm", "qk_norm_rotary"} <= {t["kernel"] for t in report["timings"]}
    assert {row["op"] for row in report["launches"]} >= {"fused_add_rms_norm", "qk_norm_rotary"}
    assert {row["batch"] for row in report["engine"]} == {1, 4}
    assert {"eager", "graphs", "hf"} <= set(report["engine"][0])
    assert any(t["kernel"] == "prefill_attention" and t["torch"] == "SDPA" for t in report["timings"])
