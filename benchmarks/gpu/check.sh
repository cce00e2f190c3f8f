#!/usr/bin/env bash
# The GPU run, in one command on a bare GPU machine: the environment, the GPU tests,
# `roipool bench --device cuda` against torchvision's CUDA ops, and a summary.
#
#   benchmarks/gpu/check.sh [OUT]             logs, JSON and summary.md go to OUT
#                                             (default: $ROIPOOL_GPU_OUT, else gpu-check/)
#   benchmarks/gpu/check.sh --dry-run [OUT]   rehearse every step on a machine without a GPU
#
# The project is used from src/ (PYTHONPATH), so the machine's own torch, torchvision,
# triton and numba stay as they are; nothing is installed. Each step has its own time
# limit, so a hang in one still leaves the others' results; the whole run ends within
# 8 minutes. Set PYTHON to choose the interpreter (default python3).
set -u
cd "$(dirname "$0")/../.."
dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
out=${1:-${ROIPOOL_GPU_OUT:-gpu-check}}
mkdir -p "$out" && out=$(cd "$out" && pwd)
py=${PYTHON:-python3}
# XLA would otherwise take 75% of the GPU memory up front, leaving torch little in the JAX step
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 ROIPOOL_GPU_OUT="$out"
if [ "$dry" = 1 ]; then
    export TRITON_INTERPRET=1 ROIPOOL_GPU_DRY_RUN=1
    tests=gpu # the interpreter runs the Triton tests in make test already, and too slowly for this limit
    bench_args=(--device cpu --workload tiny --repeat 1)
    more_args=(--device cpu --workload tiny --repeat 1)
    jax_args=(--device cpu --workload tiny --repeat 1) # XLA compiles vgg16 for 30 to 137 s on a CPU (jax.md)
    tests_limit=300 # Numba compiles the CPU path the tests compare with, on two cores
else
    unset TRITON_INTERPRET ROIPOOL_GPU_DRY_RUN
    tests="triton or gpu"
    bench_args=(--device cuda --workload vgg16 --workload maskrcnn-fpn --repeat 15)
    more_args=(--device cuda --workload rfcn --workload dota --repeat 10)
    jax_args=(--device cuda --workload vgg16 --repeat 5)
    tests_limit=180
fi
: >"$out/steps.txt"

step() { # step NAME SECONDS COMMAND...: run under its own limit, log to OUT/NAME.log, record the status
    local name=$1 limit=$2 start=$SECONDS status
    shift 2
    timeout -k 10 "$limit" "$@" >"$out/$name.log" 2>&1
    status=$?
    echo "$name exit=$status seconds=$((SECONDS - start))" | tee -a "$out/steps.txt"
}

step environment 20 "$py" benchmarks/gpu/environment.py "$out/environment.json"
# Spread over processes where pytest-xdist is installed: most of the step is compiling
# (Triton for the GPU, Numba for the CPU path the tests compare with), one kernel at a time each.
parallel=()
if "$py" -c "import xdist" 2>/dev/null; then parallel=(-n "$(( $(nproc) < 8 ? $(nproc) : 8 ))" --dist load); fi
if "$py" -c "import pytest_timeout" 2>/dev/null; then parallel+=(--timeout 150); fi
step tests "$tests_limit" "$py" -m pytest -m "$tests" -q -p no:cacheprovider -o addopts="" -rfEs "${parallel[@]}" \
    --junitxml="$out/tests.xml"
step bench 80 sh -c '"$0" -m roipool.cli bench --json "$@" >"$ROIPOOL_GPU_OUT/bench.json"' "$py" "${bench_args[@]}"
# the position-sensitive ops (rfcn) and rotated RoIAlign (dota, no peer on the GPU): a step of their own,
# so that the issue's two workloads above are not lost if this one runs long
step bench-more 50 sh -c '"$0" -m roipool.cli bench --json "$@" >"$ROIPOOL_GPU_OUT/bench-more.json"' "$py" \
    "${more_args[@]}"
# roipool.jax's XLA path on JAX's GPU (vgg16 only; XLA compiles each variant first): a step of its own
step bench-jax 40 sh -c '"$0" -m roipool.cli bench --json --jax "$@" >"$ROIPOOL_GPU_OUT/bench-jax.json"' "$py" \
    "${jax_args[@]}"
# the Triton launch settings of roi_pool and roi_align against torchvision, in one process
step sweep 90 "$py" benchmarks/gpu/sweep.py "$out/sweep.json"
step summary 20 "$py" benchmarks/gpu/summarize.py "$out"
cat "$out/summary.md"
