#!/bin/sh
# Usage: coverage.sh LAUNCHED_FILE SOURCE.cu...  Every __global__ function defined in the sources must be
# named in LAUNCHED_FILE (one kernel name per line, written by the execution layer at each test's exit).
launched=$1; shift
[ -s "$launched" ] || { echo "no kernel launches recorded in $launched (run the whole cudaemu test group)"; exit 1; }
missing=0; total=0
for k in $(sed -n 's/.*__global__[^(]*[ *]\([A-Za-z_][A-Za-z0-9_]*\)(.*/\1/p' "$@" | sort -u); do
  total=$((total + 1))
  grep -qx "$k" "$launched" || { echo "never launched under the layer: $k"; missing=$((missing + 1)); }
done
echo "$((total - missing)) of $total kernels launched under the CUDA execution layer"
[ "$total" -gt 0 ] && [ "$missing" = 0 ]
