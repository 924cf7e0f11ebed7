#!/usr/bin/env bash
# One prepared run on a GPU machine (JAX preinstalled there): the core overhead, loop and
# LOLA-DiCE benchmarks, then the core statistical tests, with the card's name recorded beside
# the numbers. About 9 minutes of device time in all (each step has its own time limit).
# Usage: OUT=<folder> bash benchmarks/gpu_check.sh
set -o pipefail
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import jax; print('jax', jax.__version__, jax.devices())"
} > "$out/gpu_env.txt" 2>&1
timeout 200 python3 benchmarks/core_overhead.py --out "$out/core_overhead_gpu.md" > "$out/bench_gpu.log" 2>&1
echo "core_overhead exit: $?" >> "$out/gpu_env.txt"
timeout 120 python3 benchmarks/loops.py --part A --out "$out/loops_gpu.md" >> "$out/bench_gpu.log" 2>&1
echo "loops exit: $?" >> "$out/gpu_env.txt"
timeout 120 python3 benchmarks/lola.py --out "$out/lola_gpu.md" >> "$out/bench_gpu.log" 2>&1
echo "lola exit: $?" >> "$out/gpu_env.txt"
timeout 90 python3 -m pytest -q -x -p no:cacheprovider tests/test_fission.py \
  tests/test_batched_loops.py tests/test_per_element.py tests/test_errors.py > "$out/pytest_gpu.log" 2>&1
echo "pytest exit: $?" >> "$out/gpu_env.txt"
cat "$out/gpu_env.txt"
tail -3 "$out/pytest_gpu.log"
