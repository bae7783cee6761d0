#!/bin/sh
# ViT benchmark: forward + backward of ViT-S/14 on one step's crops (B images x (2 x 224 + 8 x 98 px)),
# the C CPU backend (bench_vit) and the same model in PyTorch (tests/torch_ref/bench_vit_torch.py) with
# the same thread count, then the ratio of their speeds.
#   tools/bench_vit.sh [--batch 8] [--iters 3] [--warmup 1] [--drop-path 0.3] ...   (same flags for both)
# Threads: OMP_NUM_THREADS (default: all cores). Build directory: BUILD_DIR (default: build).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build}
threads=${OMP_NUM_THREADS:-$(nproc)}
# Same thread settings for both; passive OpenMP waiting is what dinotrain uses (common/threads.h).
export OMP_NUM_THREADS="$threads" OPENBLAS_NUM_THREADS="$threads" OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
python=/usr/bin/python3

if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
cmake --build "$build" -j"$threads" --target bench_vit >/dev/null

c_log=$(mktemp) t_log=$(mktemp)
trap 'rm -f "$c_log" "$t_log"' EXIT
"$build/bench_vit" "$@" | tee "$c_log"
"$python" "$root/tests/torch_ref/bench_vit_torch.py" --threads "$threads" "$@" | tee "$t_log"

field() { sed -n "s/^RESULT .* $1=\([0-9.]*\).*/\1/p" "$2"; }
c_ms=$(field ms_per_iter "$c_log"); c_ips=$(field images_per_s "$c_log")
c_bms=$(field best_ms "$c_log"); c_bips=$(field best_images_per_s "$c_log"); c_cpu=$(field cpu_ms "$c_log")
t_ms=$(field ms_per_iter "$t_log"); t_ips=$(field images_per_s "$t_log")
t_bms=$(field best_ms "$t_log"); t_bips=$(field best_images_per_s "$t_log"); t_cpu=$(field cpu_ms "$t_log")
echo "----"
echo "C (cpu backend):  mean $c_ms ms/iter ($c_ips images/s), best $c_bms ms ($c_bips images/s), CPU time $c_cpu ms/iter"
echo "PyTorch $("$python" -c 'import torch; print(torch.__version__)'): mean $t_ms ms/iter ($t_ips images/s), best $t_bms ms ($t_bips images/s), CPU time $t_cpu ms/iter"
awk -v c="$c_ips" -v t="$t_ips" -v cb="$c_bips" -v tb="$t_bips" -v cc="$c_cpu" -v tc="$t_cpu" -v n="$threads" \
  'BEGIN { printf "ratio C/PyTorch speed: %.2fx mean, %.2fx best, %.2fx by CPU time  (%d threads)\n", c / t, cb / tb, tc / cc, n }'
