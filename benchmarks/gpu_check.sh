#!/usr/bin/env bash
# One prepared run on a GPU machine (JAX preinstalled there), sized for a 10-minute call: the
# peer suite's JAX rows (all four models, a million estimates per call on the rollout), the
# core overhead, loop and LOLA-DiCE benchmarks, rewrite and compile time at smaller sizes, and
# the core tests; each step has its own time limit (about 9.5 minutes in all). Writes every
# report into OUT, then OUT/RESULTS.md: benchmarks/RESULTS.md with its GPU section replaced
# (copy it back over benchmarks/RESULTS.md). Usage: OUT=<folder> bash benchmarks/gpu_check.sh
set -o pipefail
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
out="${OUT:-benchmarks/results/gpu}"
mkdir -p "$out"
log="$out/bench_gpu.log"
env_file="$out/gpu_env.txt"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import jax; print('jax', jax.__version__, jax.devices())"
  echo "date $(date -u +%Y-%m-%dT%H:%M:%SZ), jax_scg $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
} > "$env_file" 2>&1

step() {  # step NAME SECONDS COMMAND...: runs it with a time limit, records its exit status
  local name="$1" limit="$2"
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" >> "$log" 2>&1
  echo "$name exit $? ($((SECONDS - start)) s, limit $limit s)" >> "$env_file"
}

step peers 170 python3 benchmarks/peers.py --gpu --out "$out/peers_gpu.md" --plots "$out/peers"
step core_overhead 90 python3 benchmarks/core_overhead.py --out "$out/core_overhead_gpu.md"
step loops 60 python3 benchmarks/loops.py --part A --repeats 20 --out "$out/loops_gpu.md"
step lola 60 python3 benchmarks/lola.py --out "$out/lola_gpu.md"
step rewrite_time 75 python3 benchmarks/rewrite_time.py --out "$out/rewrite_time_gpu.md" \
  --plot "$out/rewrite_time_gpu.png" --sizes "lm_scan=1,16 lm_unrolled=4 mlp=4,40,400" --repeats 2
step compile_time 60 python3 benchmarks/compile_time.py --out "$out/compile_time_gpu.md" \
  --max-sites 25
# The tests, most GPU-specific first (fission="auto" fissions every derivative off CPU); all
# of tests/test_fission.py takes minutes, so only its per-platform tests run here.
step pytest 45 python3 -m pytest -q -x -p no:cacheprovider \
  tests/test_fission.py::test_auto_fissions_the_derivatives_that_are_differentiated_again \
  tests/test_fission.py::test_which_derivatives_are_fissioned \
  tests/test_errors.py tests/test_per_element.py tests/test_batched_loops.py
cp benchmarks/RESULTS.md "$out/RESULTS.md"
python3 benchmarks/gpu_section.py "$out" --results "$out/RESULTS.md" >> "$log" 2>&1
cat "$env_file"
tail -3 "$log"
