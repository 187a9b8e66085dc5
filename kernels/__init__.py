"""Kernel backends: `torch` (reference, CPU) and `cuda` (our CUDA C through PyCUDA).

Importing this package never imports pycuda: the CUDA backend is loaded only when selected.
"""

from mili.kernels.backend import KernelBackend
from mili.kernels.selection import KERNEL_CHOICES, BackendChoice, choose_backend, select_backend
from mili.kernels.self_check import KernelShapes
from mili.kernels.torch_ops import TorchBackend

__all__ = [
    "KERNEL_CHOICES",
    "BackendChoice",
    "KernelBackend",
    "KernelShapes",
    "TorchBackend",
    "choose_backend",
    "select_backend",
]
