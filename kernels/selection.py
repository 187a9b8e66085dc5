"""Pick a kernel backend from the user's choice and what the machine has.

The CUDA backend must prove itself first: when it loads, `run_self_check` compares it with the torch
ops in the model's shapes. On a failure ``auto`` falls back to torch with an ERROR line naming the op
and the error, and ``cuda`` refuses to start. `BackendChoice.reason` says why the serving backend
serves (the ``mili_kernel_backend_info{backend,reason}`` metric).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mili.common.settings import KERNEL_CHOICES
from mili.kernels.backend import KernelBackend
from mili.kernels.self_check import KernelShapes, SelfCheckFailed, run_self_check
from mili.kernels.torch_ops import TorchBackend

logger = logging.getLogger(__name__)


# Reasons (a label value each, so a small fixed set).
REQUESTED = "requested"
NOT_CUDA_DEVICE = "not_cuda_device"
CUDA_UNAVAILABLE = "cuda_unavailable"
SELF_CHECK_PASSED = "self_check_passed"
SELF_CHECK_FAILED = "self_check_failed"
CPU_KERNELS = "cpu_kernels"  # our C++ kernels on the CPU (tested against the torch ops in CI)
CPU_UNAVAILABLE = "cpu_unavailable"
UNCHECKED = "unchecked"  # loaded without model shapes to check against (tools, benchmarks)


@dataclass(frozen=True)
class BackendChoice:
    """The backend that serves and why (one of the reasons above)."""

    backend: KernelBackend
    reason: str


def choose_backend(choice: str, device: torch.device, shapes: KernelShapes | None = None) -> BackendChoice:
    """The backend for ``choice`` (auto|cuda|cpu|torch) on ``device``, self-checked in ``shapes`` if given.

    ``auto`` takes the device's own kernels (``cuda`` on a CUDA device, ``cpu`` on the CPU). ``cuda`` and
    ``cpu`` fail loudly when they cannot load (``cuda`` also when it fails its self-check); ``auto`` falls
    back to torch with one log line saying why.
    """
    if choice not in KERNEL_CHOICES:
        raise ValueError(f"kernels must be one of {', '.join(KERNEL_CHOICES)}, got {choice!r}")
    if choice == "torch":
        return BackendChoice(TorchBackend(), REQUESTED)
    if choice == "cpu" and device.type != "cpu":
        raise RuntimeError(f"kernels='cpu' needs the engine on the CPU, but it runs on {device}")
    if device.type == "cpu":
        if choice == "cuda":
            raise RuntimeError(f"kernels='cuda' needs a CUDA device, but the engine runs on {device}")
        return _cpu_backend(choice)
    if device.type != "cuda":
        if choice == "cuda":
            raise RuntimeError(f"kernels='cuda' needs a CUDA device, but the engine runs on {device}")
        logger.info("kernels: using torch (engine device is %s, not CUDA)", device)
        return BackendChoice(TorchBackend(), NOT_CUDA_DEVICE)
    return checked_candidate(choice, _load_cuda_backend, device, shapes)


def checked_candidate(
    choice: str,
    load: Callable[[torch.device], KernelBackend],
    device: torch.device,
    shapes: KernelShapes | None,
) -> BackendChoice:
    """Load a candidate backend and self-check it; the auto/cuda decision on each outcome."""
    try:
        candidate = load(device)
    except Exception as exc:  # pycuda missing, no driver, no nvcc/cubins: auto degrades, cuda explains.
        if choice == "cuda":
            raise RuntimeError(f"kernels='cuda' could not load the CUDA backend: {exc}") from exc
        logger.warning("kernels: using torch, the CUDA backend could not load: %s", exc)
        return BackendChoice(TorchBackend(), CUDA_UNAVAILABLE)
    if shapes is None:
        return BackendChoice(candidate, UNCHECKED)
    try:
        seconds = run_self_check(candidate, shapes, device)
    except SelfCheckFailed as failure:
        if choice == "cuda":
            raise RuntimeError(
                f"kernels='cuda': the {candidate.name} backend failed its self-check on {failure.op}: "
                f"{failure.error}"
            ) from failure
        logger.error(
            "kernels: using torch, the %s backend failed its self-check on %s: %s",
            candidate.name,
            failure.op,
            failure.error,
        )
        return BackendChoice(TorchBackend(), SELF_CHECK_FAILED)
    logger.info("kernels: using %s (self-check passed in %.2f s)", candidate.name, seconds)
    return BackendChoice(candidate, SELF_CHECK_PASSED)


def select_backend(choice: str, device: torch.device) -> KernelBackend:
    """`choose_backend` without a self-check: the backend alone (tools and benchmarks)."""
    return choose_backend(choice, device).backend


def _load_cuda_backend(device: torch.device) -> KernelBackend:
    from mili.kernels.cuda_backend import CudaBackend

    return CudaBackend(device)


def _cpu_backend(choice: str) -> BackendChoice:
    try:
        from mili.kernels.cpu_backend import CpuBackend

        return BackendChoice(CpuBackend(), CPU_KERNELS)
    except Exception as exc:  # not built, no compiler, torch changed: auto degrades, cpu explains.
        if choice == "cpu":
            raise RuntimeError(f"kernels='cpu' could not load the CPU kernels: {exc}") from exc
        logger.warning("kernels: using torch, the CPU kernels could not load: %s", exc)
        return BackendChoice(TorchBackend(), CPU_UNAVAILABLE)
