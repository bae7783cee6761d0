#!/usr/bin/env bash
# Data pipeline benchmark: the C pipeline (tools/bench_data.c) and the PyTorch/PIL reference
# (tests/torch_ref/bench_data_torch.py) on the SAME JPEG tiles, one core each, then the ratio.
#   tools/bench_data.sh [TILE_DIR] [SECONDS]
# Without TILE_DIR, 64 synthetic 256 px H&E-like tiles are written to a temporary folder.
# Figures are images per CPU second of each process (robust to other jobs on a shared machine).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUILD="${BUILD:-$ROOT/build}"
SECONDS_EACH="${2:-10}"
if [[ ! -x "$BUILD/bench_data" ]]; then
  cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$BUILD" -j2 --target bench_data >/dev/null
fi
if [[ $# -ge 1 && -n "$1" ]]; then
  TILES="$1"
else
  TILES="$(mktemp -d)/tiles"
  "$BUILD/bench_data" --make "$TILES" --count 64 --size 256
fi
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
C_OUT="$("$BUILD/bench_data" "$TILES" --seconds "$SECONDS_EACH")"
echo "$C_OUT"
PY_OUT="$(/usr/bin/python3 "$ROOT/tests/torch_ref/bench_data_torch.py" "$TILES" --seconds "$SECONDS_EACH")"
echo "$PY_OUT"
c_rate="$(sed -E 's/.* ([0-9.]+) images\/s per core.*/\1/' <<<"$C_OUT")"
py_rate="$(sed -E 's/.* ([0-9.]+) images\/s per core.*/\1/' <<<"$PY_OUT")"
awk -v c="$c_rate" -v p="$py_rate" 'BEGIN { printf "ratio C / Python per core: %.2fx (bar: >= 4x)\n", c / p }'
