"""The start-up self-check and the auto/cuda decision around it, on CPU with stand-in backends."""

from __future__ import annotations

import logging

import pytest
import torch

from mili.kernels import KernelShapes, TorchBackend
from mili.kernels.backend import KERNEL_OPS
from mili.kernels.checked_backend import CheckedTorchBackend
from mili.kernels.selection import (
    CUDA_UNAVAILABLE,
    SELF_CHECK_FAILED,
    SELF_CHECK_PASSED,
    checked_candidate,
)
from mili.kernels.self_check import SelfCheckFailed, run_self_check

CPU = torch.device("cpu")
QWEN3_LIKE = KernelShapes(
    hidden_size=256,
    intermediate_size=512,
    num_heads=8,
    num_kv_heads=2,
    head_dim=128,
    block_size=16,
    dtype=torch.bfloat16,
    qk_norm=True,
)


class WrongSilu(CheckedTorchBackend):
    name = "wrong-silu"

    def silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        return super().silu_and_mul(x) * 1.05


class OneWrongDecodeRow(CheckedTorchBackend):
    """2% off in one sequence: inside atol/rtol everywhere, caught by the per-row relative norm."""

    name = "wrong-row"

    def decode_attention(self, q, k_cache, v_cache, block_tables, context_lens, scale):
        out = super().decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale)
        out[1] *= 1.02
        return out


class UnwrittenRows(CheckedTorchBackend):
    """Leaves the last rows of its output as they were allocated (NaN here)."""

    name = "unwritten"

    def rms_norm(self, x, weight, eps, residual=None):
        out, residual = super().rms_norm(x, weight, eps, residual)
        out[-2:] = float("nan")
        return out, residual


class ForgetsTheResidual(CheckedTorchBackend):
    """Normalizes x + residual but leaves the residual as it was (the in-place half of the op)."""

    name = "forgets-residual"

    def fused_add_rms_norm(self, x, residual, weight, eps):
        return super().fused_add_rms_norm(x, residual.clone(), weight, eps)


class SkipsTheQkNorm(CheckedTorchBackend):
    name = "skips-qk-norm"

    def qk_norm_rotary(self, positions, q, k, q_weight, k_weight, eps, cos_sin_cache):
        return super().qk_norm_rotary(positions, q, k, None, None, eps, cos_sin_cache)


class RotatesQkvInPlace(CheckedTorchBackend):
    """Right outputs, but it rotated its inputs too (the qkv projection the caller still holds)."""

    name = "rotates-in-place"

    def qk_norm_rotary(self, positions, q, k, q_weight, k_weight, eps, cos_sin_cache):
        q_out, k_out = super().qk_norm_rotary(positions, q, k, q_weight, k_weight, eps, cos_sin_cache)
        q.copy_(q_out)
        return q_out, k_out


class Refuses(CheckedTorchBackend):
    name = "refuses"

    def prefill_attention(self, *args):
        raise ValueError("prefill_attention: head_dim 128 is not supported")


def dtypes_and_heads():
    for dtype in (torch.bfloat16, torch.float16):
        for heads, kv_heads in ((8, 8), (8, 1), (16, 8)):
            yield KernelShapes(256, 512, heads, kv_heads, 128, 32, dtype, qk_norm=True)
    yield KernelShapes(256, 512, 8, 2, 64, 16, torch.bfloat16, qk_norm=False)  # Qwen2/Llama: no q/k norm


@pytest.mark.parametrize("shapes", list(dtypes_and_heads()), ids=str)
def test_launcher_checks_accept_every_self_check_input(shapes: KernelShapes) -> None:
    # CheckedTorchBackend refuses what CudaBackend refuses: the self-check never trips a launcher.
    run_self_check(CheckedTorchBackend(CPU), shapes, CPU)


def test_a_float32_model_fails_the_check_on_the_tensor_core_prefill() -> None:
    shapes = KernelShapes(256, 512, 8, 2, 128, 16, torch.float32, qk_norm=True)
    with pytest.raises(SelfCheckFailed, match="prefill_attention: float32 is not supported"):
        run_self_check(CheckedTorchBackend(CPU), shapes, CPU)


@pytest.mark.parametrize(
    ("backend", "op", "error"),
    [
        (WrongSilu(CPU), "silu_and_mul", "elements off"),
        (OneWrongDecodeRow(CPU), "decode_attention", "row relative error"),
        (UnwrittenRows(CPU), "rms_norm", "NaN elements"),
        (ForgetsTheResidual(CPU), "fused_add_rms_norm residual", "elements off"),
        (SkipsTheQkNorm(CPU), "qk_norm_rotary q", "elements off"),
        (RotatesQkvInPlace(CPU), "qk_norm_rotary", "wrote into its inputs"),
        (Refuses(CPU), "attention", "head_dim 128 is not supported"),
    ],
    ids=lambda v: getattr(v, "name", v),
)
def test_a_wrong_backend_is_named_by_op(backend, op: str, error: str) -> None:
    with pytest.raises(SelfCheckFailed) as failure:
        run_self_check(backend, QWEN3_LIKE, CPU)
    assert failure.value.op == op and error in failure.value.error


def test_auto_falls_back_to_torch_with_an_error_naming_the_op(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mili.kernels.selection"):
        choice = checked_candidate("auto", lambda device: WrongSilu(device), CPU, QWEN3_LIKE)
    assert isinstance(choice.backend, TorchBackend) and choice.backend.name == "torch"
    assert choice.reason == SELF_CHECK_FAILED
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "silu_and_mul" in errors[0] and "wrong-silu" in errors[0], errors


def test_cuda_refuses_to_start_on_a_failed_self_check() -> None:
    with pytest.raises(RuntimeError, match="failed its self-check on decode_attention"):
        checked_candidate("cuda", lambda device: OneWrongDecodeRow(device), CPU, QWEN3_LIKE)


def test_a_correct_backend_serves_with_the_reason_that_it_passed() -> None:
    candidate = CheckedTorchBackend(CPU)
    choice = checked_candidate("cuda", lambda device: candidate, CPU, QWEN3_LIKE)
    assert choice.backend is candidate and choice.reason == SELF_CHECK_PASSED
    assert set(candidate.calls) == set(KERNEL_OPS)


def test_a_backend_that_cannot_load_degrades_under_auto_only() -> None:
    def broken(device: torch.device):
        raise ImportError("No module named 'pycuda'")

    assert checked_candidate("auto", broken, CPU, QWEN3_LIKE).reason == CUDA_UNAVAILABLE
    with pytest.raises(RuntimeError, match="could not load the CUDA backend: No module named 'pycuda'"):
        checked_candidate("cuda", broken, CPU, QWEN3_LIKE)
