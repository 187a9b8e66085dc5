#!/usr/bin/env bash
# The whole GPU verification in one go: build pycuda from the carried wheelhouse, run one small case of
# each kernel under compute-sanitizer memcheck, then tests/performance/gpu_check.py (every kernel
# against a float32 torch reference, the engine's greedy output with cuda == torch and graphs ==
# eager, the kernel and engine timing tables). Needs no internet; sized for <= 8 minutes on an H200.
#
# usage: tests/performance/gpu_check.sh [--quick] [--dry-run]
#   --dry-run  no GPU needed: skips the pycuda build and the sanitizer, and runs every step of the
#              Python harness on CPU, small, with the torch reference behind the CUDA launchers'
#              argument checks standing in for the kernels (checks the script itself)
#   --quick    fewer cases (a smoke run)
# env: MILI_GPU_WHEELHOUSE (default .gpu-wheelhouse, filled by make_gpu_wheelhouse.sh),
#      PYTHON (default python3), OUT (results folder; the device tool sets it), CUDA_HOME,
#      MILI_GPU_CHECK_BUDGET_S (default 450 on a GPU, 1800 dry): seconds from this script's start after
#      which gpu_check.py starts no further check (those are listed as skipped, exit status 5), so the
#      whole run ends inside the device's time limit with its results written.
set -euo pipefail
started=$(date +%s)
cd "$(dirname "$0")/../.."
root=$PWD
python=${PYTHON:-python3}
wheelhouse=${MILI_GPU_WHEELHOUSE:-$root/.gpu-wheelhouse}
out_dir=${OUT:-$root/.gpu-check-out}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out_dir"
dry_run=0
for arg in "$@"; do [[ $arg == --dry-run ]] && dry_run=1; done
budget=${MILI_GPU_CHECK_BUDGET_S:-$((dry_run ? 1800 : 450))}
deadline=$((started + budget))
log() { printf '[gpu_check %(%H:%M:%S)T] %s\n' -1 "$*"; }

# mili without installing it: a namespace package whose subpackages point at the checkout.
mkdir -p "$work/py/mili"
for part in kernels worker operator; do ln -s "$root/$part" "$work/py/mili/$part"; done
export PYTHONPATH="$work/py:$work/site${PYTHONPATH:+:$PYTHONPATH}"
export MILI_CACHE_DIR="$work/cache"  # kernels compile fresh for this machine's GPU
export PYTHONUNBUFFERED=1

install_missing_wheels() {
  local wheel dist missing=()
  for wheel in "$wheelhouse"/*.whl; do
    [[ -e $wheel ]] || continue
    dist=$(basename "$wheel" | cut -d- -f1)
    if ! "$python" -c 'import importlib.metadata as m, sys; m.version(sys.argv[1])' "$dist" 2>/dev/null; then
      missing+=("$wheel")
    fi
  done
  if ((${#missing[@]})); then
    log "installing ${#missing[@]} wheels the machine lacks: $(printf '%s ' "${missing[@]##*/}")"
    "$python" -m pip install --quiet --no-index --no-deps --no-compile --target "$work/site" "${missing[@]}"
  fi
}

build_pycuda() {
  if "$python" -c 'import pycuda.driver' 2>/dev/null; then
    log "pycuda already importable"
    return
  fi
  local sdist cuda_root include
  sdist=$(find "$wheelhouse" -maxdepth 1 -name 'pycuda-*.tar.gz' | sort | tail -n 1)
  if [[ -z $sdist ]]; then
    echo "no pycuda sdist in $wheelhouse: run tests/performance/make_gpu_wheelhouse.sh where pip works" >&2
    exit 2
  fi
  cuda_root=${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc)")")}
  include=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  if [[ ! -f $include/Python.h ]]; then
    echo "Python.h is missing in $include: pycuda cannot be built here (install python3-dev)" >&2
    exit 2
  fi
  # -lcuda needs an unversioned libcuda.so: the toolkit's link stub, else the driver's own library.
  local lib candidate
  lib=$(find "$cuda_root/lib64/stubs" "$cuda_root/targets/x86_64-linux/lib/stubs" /usr/local/nvidia/lib64 \
    /usr/lib/x86_64-linux-gnu -maxdepth 1 -name 'libcuda.so*' 2>/dev/null | sort | head -n 1 || true)
  if [[ -z $lib ]]; then
    echo "no libcuda.so found to link pycuda against (looked in $cuda_root stubs and the driver dirs)" >&2
    exit 2
  fi
  mkdir -p "$work/cudalib"
  candidate=$work/cudalib/libcuda.so
  ln -sf "$lib" "$candidate"
  log "building $(basename "$sdist") against $cuda_root, linking $lib (curand off)"
  tar -xzf "$sdist" -C "$work"
  local src
  src=$(find "$work" -maxdepth 1 -type d -name 'pycuda-*' | head -n 1)
  (
    cd "$src"
    "$python" configure.py --cuda-root="$cuda_root" --no-cuda-enable-curand \
      --cudadrv-lib-dir="$work/cudalib" >"$work/pycuda-configure.log"
    "$python" setup.py build_ext --inplace -j "$(nproc)" >"$work/pycuda-build.log" 2>&1 ||
      { tail -n 40 "$work/pycuda-build.log" >&2; exit 3; }
  )
  export PYTHONPATH="$src:$PYTHONPATH"
  "$python" -c 'import pycuda.driver as d; d.init(); print("pycuda", d.get_version(), "driver", d.get_driver_version())'
}

find_sanitizer() {
  local candidate
  for candidate in "$(command -v compute-sanitizer || true)" "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" \
    /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
    [[ -n $candidate && -x $candidate ]] && { echo "$candidate"; return; }
  done
}

log "start (dry run: $dry_run)"
if ((dry_run)); then
  # The same steps as on a GPU, on CPU: the sanitizer's smoke cases (without the sanitizer), then all.
  "$python" tests/performance/gpu_check.py --sanitizer-smoke "$@"
  "$python" tests/performance/gpu_check.py --out "$out_dir" --deadline "$deadline" "$@"
  exit
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
install_missing_wheels
build_pycuda
log "precompiling kernels"
"$python" -m mili.kernels.cuda_build --arch "sm_$("$python" -c 'import torch; print("".join(map(str, torch.cuda.get_device_capability())))')"
status=0
sanitizer=$(find_sanitizer)
if [[ -n $sanitizer ]]; then
  log "one small case of each kernel under compute-sanitizer memcheck"
  "$sanitizer" --tool memcheck --error-exitcode 3 --log-file "$out_dir/memcheck.log" \
    "$python" tests/performance/gpu_check.py --sanitizer-smoke "$@" || status=$?
  tail -n 5 "$out_dir/memcheck.log" || true
  ((status == 0)) || log "memcheck FAILED (exit $status), see memcheck.log"
else
  log "compute-sanitizer not found (PATH, \$CUDA_HOME/bin): memcheck NOT run"
  status=4
fi
log "running checks ($((deadline - $(date +%s))) s of the budget left)"
"$python" tests/performance/gpu_check.py --out "$out_dir" --deadline "$deadline" "$@" || status=$?
log "done (status $status)"
exit "$status"
