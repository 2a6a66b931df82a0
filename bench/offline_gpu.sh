#!/usr/bin/env bash
# The GPU benchmarks on a CUDA host that has its own Python with PyTorch but no package index (an air-gapped GPU
# server): the few packages it lacks travel as wheels and are installed into a temporary folder; nothing else on the
# host is touched.
#
#   bench/offline_gpu.sh wheels [DIR]       # where PyPI is reachable: wheels for the host's Python (PY_VERSION,
#                                           # default 3.12), at the versions pinned in uv.lock; DIR defaults to .whl
#   bench/offline_gpu.sh run [DIR] [OUT]    # on the GPU host: install, check, measure, summarise into OUT
#
# `run` times the CUDA cases only: bench/test_gpu.py (encoder FLOP/s against the bf16 peak, the 10,000-patch slide)
# and, from bench/test_stages.py, tiling, patch reading, eager fp32 on the GPU and the CUDA engines. The CPU engines,
# Triton and the seed baseline belong to the CPU run. It stops before any work, naming what is missing, when an
# import fails or no GPU is visible. BENCH_MODE=--benchmark-disable runs the same cases once, untimed (on a machine
# without CUDA: the CPU rehearsal of bench.conftest).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PACKAGES=(openslide-python openslide-bin imagecodecs nibabel)  # the project's runtime needs a PyTorch image lacks
MODULES=(torch torchvision numpy PIL openslide tifffile imagecodecs h5py skimage nibabel pandas yaml onnx onnxruntime
         tqdm rich psutil pytest pytest_benchmark pytest_timeout)
SELECT="not (torchscript or onnxruntime_cpu or triton or seed_baseline or interleaved)"

locked_version() {  # the version of package $1 in uv.lock
  "$PY" - "$1" <<'PY'
import sys, tomllib
name = sys.argv[1]
lock = tomllib.load(open("uv.lock", "rb"))
print(next(p["version"] for p in lock["package"] if p["name"] == name))
PY
}

wheels() {
  local dir=${1:-.whl} version=${PY_VERSION:-3.12} specs=() platforms=()
  for package in "${PACKAGES[@]}"; do specs+=("$package==$(locked_version "$package")"); done
  for tag in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
  done
  mkdir -p "$dir"
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
    "${platforms[@]}" -d "$dir" "${specs[@]}"
  du -ch "$dir"/*.whl
}

run() {
  local dir=${1:-.whl} out=${2:-bench/results} mode=${BENCH_MODE:---benchmark-only} site
  site=$(mktemp -d)
  if compgen -G "$dir/*.whl" >/dev/null; then
    "$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$dir"/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  "$PY" - "${MODULES[@]}" <<'PY'
import importlib, sys
missing = []
for name in sys.argv[1:]:
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '')}")
    except Exception as exc:  # ImportError, or a library that fails to load
        missing.append(f"{name} ({type(exc).__name__}: {exc})")
if missing:
    sys.exit("missing on this host: " + "; ".join(missing) + ". Bring their wheels: bench/offline_gpu.sh wheels")
PY
  if [ "$mode" != "--benchmark-disable" ]; then
    "$PY" -c "import sys, torch; torch.cuda.is_available() or sys.exit('no CUDA device visible to torch ' + torch.__version__); print(torch.cuda.get_device_name(0))"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || true
  fi
  mkdir -p "$out"
  local json=(--benchmark-json "$out/gpu.json")
  [ "$mode" = "--benchmark-disable" ] && json=()
  "$PY" -m pytest -p no:cacheprovider -q bench/test_gpu.py bench/test_stages.py -k "$SELECT" "$mode" "${json[@]}" \
    --timeout 900
  if [ "$mode" != "--benchmark-disable" ]; then
    "$PY" -m bench.summarize "$out/gpu.json" --output "$out/gpu.md"
  fi
}

case "${1:-}" in
  wheels) shift; wheels "$@" ;;
  run) shift; run "$@" ;;
  *) echo "usage: bench/offline_gpu.sh wheels [DIR] | run [DIR] [OUT]" >&2; exit 2 ;;
esac
