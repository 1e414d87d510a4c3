#!/usr/bin/env bash
# The GPU checks of issue #4 (training) and #3 (features), for a lent CUDA machine whose python3
# has torch but none of uwav's other dependencies and no network. `make gpu-wheels` (here, with
# network) saves them as wheels in two parts that each fit one device call's 64 MiB:
#   .whl/train     pydantic, typing-extensions, polars      -> bash benchmarks/gpu_session.sh train
#   .whl/features  PyAV, zarr, numcodecs, soxr, open_clip  -> bash benchmarks/gpu_session.sh features
# Run `train` first (carry .whl/train), then `features` (carry .whl/features) on the same warm
# machine: both install into /tmp/site, and `features` needs what `train` installed. Results are
# written to $OUT (or ./gpu-out) as JSON and logs.
set -uo pipefail
part=${1:?usage: gpu_session.sh train|features}
out=${OUT:-gpu-out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site ".whl/$part"/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu_$part.txt"
case $part in
  train)
    # Our loop at fp32 and bf16, eager and compiled, against the naive loops; 3 epochs so the
    # reported one is warm.
    python3 benchmarks/bench_train.py --device cuda --epochs 3 --naive-batches 30 --runs bf16 fp32 bf16-compiled fp32-compiled 2>&1 | tee "$out/bench_train.log"
    tail -n 1 "$out/bench_train.log" > "$out/bench_train.json" ;;
  features)
    python3 -c "import polars" 2>/dev/null || { echo "polars is missing: run 'train' first on this warm machine"; exit 1; }
    python3 benchmarks/gpu_check.py 2>&1 | tee "$out/gpu_check.log"
    tail -n 1 "$out/gpu_check.log" > "$out/gpu_check.json" ;;
  *) echo "unknown part $part (train | features)"; exit 2 ;;
esac
