"""Pick a kernel backend from the user's choice and what the machine has."""

from __future__ import annotations

import logging

import torch

from mili.kernels.backend import KernelBackend
from mili.kernels.torch_ops import TorchBackend

logger = logging.getLogger(__name__)

KERNEL_CHOICES = ("auto", "cuda", "cpu", "torch")


def select_backend(choice: str, device: torch.device) -> KernelBackend:
    """Return the backend for ``choice`` (auto|cuda|cpu|torch) on ``device``.

    ``auto`` takes the device's own kernels (``cuda`` on a CUDA device, ``cpu`` on the CPU) and falls back
    to torch with one log line saying why; ``cuda`` and ``cpu`` fail loudly when they cannot load.
    """
    if choice not in KERNEL_CHOICES:
        raise ValueError(f"kernels must be one of {', '.join(KERNEL_CHOICES)}, got {choice!r}")
    if choice == "torch":
        return TorchBackend()
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
        return TorchBackend()
    try:
        from mili.kernels.cuda_backend import CudaBackend

        return CudaBackend(device)
    except Exception as exc:  # pycuda missing, no driver, no nvcc/cubins: auto degrades, cuda explains.
        if choice == "cuda":
            raise RuntimeError(f"kernels='cuda' could not load the CUDA backend: {exc}") from exc
        logger.warning("kernels: using torch, the CUDA backend could not load: %s", exc)
        return TorchBackend()


def _cpu_backend(choice: str) -> KernelBackend:
    try:
        from mili.kernels.cpu_backend import CpuBackend

        return CpuBackend()
    except Exception as exc:  # not built, no compiler, torch changed: auto degrades, cpu explains.
        if choice == "cpu":
            raise RuntimeError(f"kernels='cpu' could not load the CPU kernels: {exc}") from exc
        logger.warning("kernels: using torch, the CPU kernels could not load: %s", exc)
        return TorchBackend()
