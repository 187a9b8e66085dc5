"""Choosing kernels on a machine without a GPU or pycuda never needs pycuda."""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
import textwrap

import pytest
import torch

from mili.kernels import TorchBackend, select_backend

needs_no_pycuda = pytest.mark.skipif(
    importlib.util.find_spec("pycuda") is not None,
    reason="pycuda is installed here: the fallback is not exercised",
)


def test_import_and_auto_on_cpu_never_import_pycuda() -> None:
    # A fresh interpreter: other tests in this process must not hide an import.
    script = textwrap.dedent(
        """
        import sys, torch
        import mili.kernels
        from mili.kernels import select_backend
        backend = select_backend("auto", torch.device("cpu"))
        assert backend.name in ("cpu", "torch"), backend
        leaked = sorted(m for m in sys.modules if m == "pycuda" or m.startswith("pycuda."))
        assert not leaked, leaked
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_cuda_on_cpu_device_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        select_backend("cuda", torch.device("cpu"))


@needs_no_pycuda
def test_auto_on_cuda_device_without_pycuda_falls_back_with_one_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="mili.kernels.selection"):
        backend = select_backend("auto", torch.device("cuda"))
    assert isinstance(backend, TorchBackend)
    lines = [r.getMessage() for r in caplog.records if r.name == "mili.kernels.selection"]
    assert len(lines) == 1 and "pycuda" in lines[0], lines


@needs_no_pycuda
def test_cuda_on_cuda_device_without_pycuda_says_why() -> None:
    with pytest.raises(RuntimeError, match=r"could not load the CUDA backend.*pycuda"):
        select_backend("cuda", torch.device("cuda"))
