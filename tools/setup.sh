#!/usr/bin/env bash
# Installs what dinotrain needs on a Debian 12 machine (as root), then configures and builds it in
# ./build. Safe to run again: installs only what is missing, rebuilds incrementally.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(build-essential cmake pkg-config
          libopenblas-dev libyaml-dev libjson-c-dev libturbojpeg0-dev libjpeg62-turbo-dev libpng-dev libtiff-dev
          libopenslide-dev libopenmpi-dev openmpi-bin libhdf5-dev
          python3 python3-numpy python3-torch python3-torchvision python3-matplotlib
          clang libclang-rt-dev libomp-dev) # the fuzzers: clang with libFuzzer (docs/fuzzing.md)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then echo "setup: run as root to install packages" >&2; exit 1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# CUDA lives outside apt (/usr/local/cuda); it is built whenever nvcc is there, GPU or not.
if [ -x /usr/local/cuda/bin/nvcc ]; then export PATH=/usr/local/cuda/bin:$PATH; fi

jobs=$(nproc)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >build-configure.log 2>&1 || { cat build-configure.log; exit 1; }
grep -A10 "dinotrain build summary" build-configure.log | sed 's/^-- //' || true
cmake --build build -j "$jobs"
