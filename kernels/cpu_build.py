"""Compile kernels/cpu/*.cpp into one shared library of torch ops (``torch.ops.mili_cpu.*``), cached.

Plain g++ against torch's headers and libraries (no ninja, no pybind): the library registers its ops
with ``TORCH_LIBRARY`` and is loaded with ``torch.ops.load_library``. It is named
``mili_cpu_ops-<key>.so``, where ``key`` hashes the sources, the compiler's version, the flags and the
torch version, so a changed source, compiler or torch never reuses a stale binary.

`make venv` builds it right after installing (``python -I -m mili.kernels.cpu_build``) and fails with a
clear message when there is no C++ compiler; at run time `--kernels auto` uses it when present and
falls back to the torch ops otherwise. Cache directory: ``$MILI_CACHE_DIR/kernels``.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from mili.kernels.cuda_build import cache_dir

SOURCE_DIR = Path(__file__).resolve().parent / "cpu"
# Portable code (no -march=native: a cached library may move to another machine of the image);
# the loops are written for the compiler's auto-vectorizer (omp simd).
CXX_FLAGS = ("-O3", "-std=c++20", "-shared", "-fPIC", "-fopenmp", "-Wall", "-Werror", "-Wno-unknown-pragmas")


class CpuKernelBuildError(RuntimeError):
    """No C++ compiler, or it rejected a source."""


def kernel_sources() -> list[Path]:
    return sorted(SOURCE_DIR.glob("*.cpp"))


def find_compiler() -> str:
    """``$CXX``, else ``g++``/``c++`` on PATH; raises a message saying what to install."""
    for candidate in (os.environ.get("CXX"), "g++", "c++"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)  # type: ignore[return-value]
    raise CpuKernelBuildError(
        "no C++ compiler found for MILI's CPU kernels: install g++ (apt-get install g++) or set $CXX; "
        "without them the engine uses the slower torch ops (--kernels torch)"
    )


@functools.cache
def compiler_version(compiler: str) -> str:
    return subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout


def torch_flags() -> list[str]:
    from torch.utils import cpp_extension

    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    flags = [f"-D_GLIBCXX_USE_CXX11_ABI={abi}"]
    flags += [f"-I{path}" for path in cpp_extension.include_paths()]
    for path in cpp_extension.library_paths():
        flags += [f"-L{path}", f"-Wl,-rpath,{path}"]
    return [*flags, "-lc10", "-ltorch_cpu", "-ltorch"]


def library_name(compiler: str) -> str:
    digest = hashlib.sha256()
    for source in kernel_sources():
        digest.update(source.name.encode() + source.read_bytes())
    digest.update(compiler_version(compiler).encode() + " ".join(CXX_FLAGS).encode())
    digest.update(torch.__version__.encode())
    return f"mili_cpu_ops-{digest.hexdigest()[:16]}.so"


def cached_library() -> Path | None:
    """The built library for these sources, compiler and torch, if it is in the cache."""
    try:
        path = cache_dir() / library_name(find_compiler())
    except CpuKernelBuildError:
        return None
    return path if path.exists() else None


def build(out_dir: Path | None = None) -> Path:
    """Compile (or reuse) the library; returns its path. Raises `CpuKernelBuildError` with the reason."""
    compiler = find_compiler()
    out_dir = out_dir or cache_dir()
    target = out_dir / library_name(compiler)
    if target.exists():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        partial = Path(tmp) / target.name
        command = [compiler, *CXX_FLAGS, *map(str, kernel_sources()), "-o", str(partial), *torch_flags()]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise CpuKernelBuildError(f"{compiler} failed on kernels/cpu:\n{result.stderr[-4000:]}")
        partial.replace(target)  # atomic: concurrent builders never load a half-written library
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build MILI's CPU kernels (torch ops) into the cache.")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: the cache)")
    args = parser.parse_args(argv)
    try:
        path = build(args.out)
    except CpuKernelBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
