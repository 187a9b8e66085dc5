"""Pick a kernel backend from the user's choice and what the machine has."""

from __future__ import annotations

import logging

import torch

from mili.kernels.backend import KernelBackend
from mili.kernels.torch_ops import TorchBackend

logger = logging.getLogger(__name__)

KERNEL_CHOICES = ("auto", "cuda", "torch")


def select_backend(choice: str, device: torch.device) -> KernelBackend:
    """Return the backend for ``choice`` (auto|cuda|torch) on ``device``.

    ``cuda`` fails loudly when it cannot load; ``auto`` falls back to torch with one log line saying why.
    """
    if choice not in KERNEL_CHOICES:
        raise ValueError(f"kernels must be one of {', '.join(KERNEL_CHOICES)}, got {choice!r}")
    if choice == "torch":
        return TorchBackend()
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
