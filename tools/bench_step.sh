#!/bin/sh
# The whole training step (teacher, student, shared DINO/iBOT head, losses, backward, clipping, AdamW,
# EMA): the C step (bench_step) and the same step in PyTorch (tests/torch_ref/bench_step_torch.py) on the
# same model, batch and thread count, one after the other, then the ratio of their speeds. bench_step's
# output ends with its per-op-family roofline table (predicted on --card, default h100, next to the time
# measured per op on this backend: the CPU's on --backend cpu).
#   tools/bench_step.sh [--backend cpu|cuda] [--arch vit_small] [--batch 2] [--K 65536] [--iters 3] ...
# The flags go to both (bench_step's --backend picks the device; PyTorch uses CUDA when it sees a GPU).
# CPU threads: OMP_NUM_THREADS (default: all cores). Build directory: BUILD_DIR (default: build).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build}
threads=${OMP_NUM_THREADS:-$(nproc)}
export OMP_NUM_THREADS="$threads" OPENBLAS_NUM_THREADS="$threads" OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
python=${PYTHON:-/usr/bin/python3}

backend=cpu
prev=
for a in "$@"; do [ "$prev" = "--backend" ] && backend=$a; prev=$a; done
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
cmake --build "$build" -j"$threads" --target bench_step >/dev/null

c_log=$(mktemp) t_log=$(mktemp)
trap 'rm -f "$c_log" "$t_log"' EXIT
"$build/bench_step" --backend "$backend" "$@" | tee "$c_log"
# the same flags without --backend (and --recompute / --no-peak / --peak-size / --card / --op-steps /
# --per-op, which are ours alone: bench_step's per-op roofline table, on --card, default H100)
set -- $(printf '%s\n' "$@" | awk 'skip { skip = 0; next }
                                   $0 == "--backend" || $0 == "--peak-size" || $0 == "--card" || $0 == "--op-steps" { skip = 1; next }
                                   $0 == "--recompute" || $0 == "--no-peak" || $0 == "--per-op" { next } { print }')
peak=$(sed -n 's/^RESULT .* peak_tflops=\([0-9.-]*\).*/\1/p' "$c_log")
"$python" "$root/tests/torch_ref/bench_step_torch.py" --threads "$threads" --modes "${TORCH_MODES:-eager}" \
  --peak-tflops "${peak:--1}" "$@" | tee "$t_log"

field() { sed -n "s/^RESULT .* $1=\([0-9.]*\).*/\1/p" "$2" | head -1; }
c_ips=$(field img_per_s "$c_log"); t_ips=$(field img_per_s "$t_log")
echo "----"
echo "C ($backend backend): $(field step_ms "$c_log") ms/step ($c_ips images/s)"
echo "PyTorch $("$python" -c 'import torch; print(torch.__version__)' 2>/dev/null): $(field step_ms "$t_log") ms/step ($t_ips images/s)"
if [ -n "$c_ips" ] && [ -n "$t_ips" ]; then
  awk -v c="$c_ips" -v t="$t_ips" -v n="$threads" \
    'BEGIN { printf "ratio C/PyTorch speed: %.2fx  (%d CPU threads)\n", c / t, n }'
fi
