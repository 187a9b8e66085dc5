#!/usr/bin/env bash
# Fill the wheelhouse that gpu_check.sh installs from on a GPU machine with no internet.
#
# pycuda goes in as its source distribution: it links against the CUDA driver API, so it must be built
# on the GPU machine against that machine's CUDA (gpu_check.sh runs its configure.py, then
# `setup.py build_ext`). Its pure-Python dependencies (and siphash24, pytools' one compiled
# dependency) go in as wheels for the GPU machine's CPython. So do the worker's own dependencies that
# the GPU image lacks; gpu_check.sh installs only the ones the machine does not already have.
#
# usage: tests/performance/make_gpu_wheelhouse.sh [DEST]   (default .gpu-wheelhouse, git-ignored)
set -euo pipefail
cd "$(dirname "$0")/../.."

dest=${1:-.gpu-wheelhouse}
python_version=${GPU_PYTHON_VERSION:-3.12}
python=${PYTHON:-.venv/bin/python}
[[ -x $python ]] || python=python3

pycuda_spec=${PYCUDA_SPEC:-pycuda==2026.1}
pycuda_deps=(pytools==2026.1.1 platformdirs mako siphash24 typing-extensions markupsafe)
read -r -a worker_deps <<<"${GPU_WORKER_DEPS:-fastapi uvicorn pydantic gguf jinja2 prometheus-client transformers tokenizers safetensors}"
target=(--python-version "$python_version" --implementation cp --only-binary=:all:
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)

mkdir -p "$dest"
"$python" -m pip download --quiet --no-deps --no-binary pycuda "$pycuda_spec" -d "$dest"
"$python" -m pip download --quiet --no-deps "${target[@]}" "${pycuda_deps[@]}" -d "$dest"
# The worker's dependencies with theirs (numpy and the like are skipped on the GPU machine if present).
"$python" -m pip download --quiet "${target[@]}" "${worker_deps[@]}" -d "$dest"
du -sh "$dest"
ls "$dest"
