#!/usr/bin/env bash
# Everything a GPU lease runs, as ONE call of the device tool that ends within 8 minutes, build included
# (docs/cuda-backend.md, "Running the GPU check"):
#   info    nvidia-smi, driver, nvcc, cmake, gcc, glibc, python3's torch; the card's name heads the table
#   build   sm_90 only (DINO_CUDA_ARCHS, default 90), only the GPU tests and bench_step, all cores: the
#           GPU subset (nvcc + gcc, no CMake: model/cuda + dist/nccl.cu, and every libdino source whose
#           headers this machine has, linked from one archive with --gc-sections) with OpenBLAS, json-c
#           and libyaml from the system or from the .debs carried in build-gpu-deps/; the CMake build
#           instead when the machine has every library the full build needs
#   test    every case of test_cuda_ops and test_cuda and the NCCL cases of test_dist, one process per
#           case under `timeout`, DINO_REQUIRE_GPU=1 (no device = failure), a 30 s collective timeout
#           for NCCL; pass/fail/skip/time and the worst err/tol ratio of each case; every "err/tol" and
#           "normwise" line goes to tolerances.log
#   bench   the whole training step, tools/bench_step (C) and tests/torch_ref/bench_step_torch.py (the
#           machine's PyTorch: eager with bf16 autocast and SDPA; torch.compile only if time is left), on
#           ViT-S/14 and ViT-L/14, same card, MFU against the bf16 rate bench_step measures; the summary
#           adds bench_step's per-op-family table: the roofline prediction for this card (H100 or H200)
#           next to the time measured per op (docs/performance.md)
#   summary summary.md: the tables, the ratio C / PyTorch, the --only line that reruns what failed
# Every item (a test case, a benchmark run) rewrites summary.md and copies the results to $OUT, so a call
# killed at its limit still returns what finished. No new item starts after GPU_CHECK_DEADLINE_S (450 s,
# 7 min 30 s) and each item's timeout is cut to what is left; the tests stop starting new cases at
# GPU_CHECK_TESTS_UNTIL_S (330 s) so that the benchmark keeps its two minutes (not with --only).
#
#   tools/gpu_check.sh                 the lease call (device tool: carry ["build-gpu-deps"], timeout_s 540)
#   tools/gpu_check.sh --only REGEX    a rerun call: info, build, then only the items whose name or stage
#                                      matches (e.g. 'cuda_ops\.attention|dist\.', 'bench', 'vit_large',
#                                      'torch-compile'); no sub-deadline for the tests; --only info: the
#                                      machine's info alone. The summary ends with the --only of what
#                                      failed or did not run
#   tools/gpu_check.sh --sanitize      the test cases under compute-sanitizer memcheck (use with --only)
#   tools/gpu_check.sh --dry           HERE, on the CPU: every stage's control flow with the CUDA execution
#                                      layer standing in (build/cudaemu_*: a few fast cases, bench_step at
#                                      tiny sizes, PyTorch on the CPU); --dry-build rebuilds those targets
#   tools/gpu_check.sh --build-only    info and build, nothing else (exit 0 when it linked); here, with
#                                      GPU_CHECK_FORCE_DEBS=1, the bare-machine build (docs)
#   tools/gpu_check.sh --fetch-deps    ON THE BUILD MACHINE (network): the .debs of OpenBLAS, json-c and
#                                      libyaml into build-gpu-deps/ (12.9 MB; carry it with the lease)
#   --out DIR                          where the results go (default: $OUT when set)
#
# Results: build-gpu-check/ (build-gpu-check-dry/ for --dry): summary.md, results.tsv, info.log,
# build.log, tests.log, tolerances.log, bench.log (7 files: the device tool returns at most 8).
set -u
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
T0=$(date +%s)
ARGS="$*"

ONLY=""
DRY=0
DRY_BUILD=0
SANITIZE=0
BUILD_ONLY=0
DEST=${OUT:-}
while [ $# -gt 0 ]; do
  case "$1" in
    --only) ONLY=$2; shift 2 ;;
    --dry) DRY=1; shift ;;
    --dry-build) DRY=1; DRY_BUILD=1; shift ;;
    --sanitize) SANITIZE=1; shift ;;
    --build-only) BUILD_ONLY=1; shift ;;
    --out) DEST=$2; shift 2 ;;
    --fetch-deps) # build-gpu-deps/ is ignored (/build-*/): the lease call must name it in carry
      mkdir -p build-gpu-deps && cd build-gpu-deps || exit 1
      rm -f ./*.deb
      # libopenblas0-pthread: the library; libopenblas-pthread-dev: cblas.h and libopenblas.so;
      # libgfortran5 + libquadmath0: what the library needs at run time; libjson-c5 + libjson-c-dev
      # (common/json.c: checkpoints, safetensors, export) and libyaml-0-2 + libyaml-dev (train/config.c:
      # bench_step --config), which need only libc (apt-cache depends)
      apt-get download libopenblas0-pthread libopenblas-pthread-dev libgfortran5 libquadmath0 \
        libjson-c5 libjson-c-dev libyaml-0-2 libyaml-dev || exit 1
      ls -la ./*.deb
      total=$(du -cb ./*.deb | tail -1 | cut -f1)
      echo "build-gpu-deps: $(awk -v b="$total" 'BEGIN{printf "%.1f MB (%.1f MiB)", b / 1e6, b / 1048576}') (the working tree and carried paths may not exceed 64 MiB)"
      exit 0 ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

DEADLINE=${GPU_CHECK_DEADLINE_S:-450}
TESTS_UNTIL=${GPU_CHECK_TESTS_UNTIL_S:-330}
[ -n "$ONLY" ] && TESTS_UNTIL=$DEADLINE
TEST_TIMEOUT=${GPU_CHECK_TEST_TIMEOUT_S:-90}
BUILD_TIMEOUT=${GPU_CHECK_BUILD_TIMEOUT_S:-300}
ARCHS=${DINO_CUDA_ARCHS:-90}
JOBS=$(nproc 2>/dev/null || echo 4)
if [ "$DRY" = 1 ]; then
  RES=$ROOT/build-gpu-check-dry
  JOBS=2
  # the few fast cases of the dry run (every case with --only)
  DRY_TESTS=${GPU_CHECK_DRY_TESTS:-'^(cuda\.cuda_device_visible|cuda_ops\.(layernorm_fwd_bwd|attention_fp32_gemms|attention_bf16_gemms|flash_attention_dh64|ssl_step_softmax_koleo_fp32_gemm|backend_new_reports_missing_device)|dist\.nccl_allreduce_reduce_scatter_gpu)$'}
  BENCH=${GPU_CHECK_BENCH:-"vit_small:2 vit_large:2"}
  BENCH_ARGS="--depth 1 --global-size 56 --local-size 28 --local 2 --K 512 --iters 1 --warmup 0"
  PEAK_ARGS="--peak-size 256"
else
  RES=$ROOT/build-gpu-check
  # batch per GPU; a trailing r: activations recomputed (bench_step --recompute; PyTorch runs the plain step)
  BENCH=${GPU_CHECK_BENCH:-"vit_small:32 vit_large:16"}
  BENCH_ARGS="--iters 10 --warmup 3"
  PEAK_ARGS=""
fi
mkdir -p "$RES"
rm -f "$RES"/summary.md "$RES"/results.tsv "$RES"/*.log "$RES"/*.tmp "$RES"/roofline.*.md
touch "$RES"/results.tsv "$RES"/info.log "$RES"/build.log "$RES"/tests.log "$RES"/tolerances.log "$RES"/bench.log

now() { echo $(( $(date +%s) - T0 )); }
left() { echo $(( DEADLINE - $(now) )); }
# cap SECONDS: SECONDS or what is left before the deadline, whichever is less
cap() { local l; l=$(left); [ "$l" -lt 1 ] && l=1; [ "$1" -lt "$l" ] && echo "$1" || echo "$l"; }
say() { echo "[gpu_check $(printf '%3d' "$(now)")s] $*"; }

copy_out() {
  [ -n "$DEST" ] || return 0
  mkdir -p "$DEST" || return 0
  local f
  for f in summary.md results.tsv info.log build.log tests.log tolerances.log bench.log; do
    [ -f "$RES/$f" ] || continue
    # the device tool returns files of at most 16 MiB: keep the end of a longer log
    if [ "$(stat -c %s "$RES/$f")" -gt 15000000 ]; then tail -c 15000000 "$RES/$f" > "$DEST/$f"; else cp -f "$RES/$f" "$DEST/$f"; fi
  done
  return 0
}
trap 'summary; copy_out' EXIT
trap 'say "terminated"; exit 143' TERM INT

# An item wanted by --only: its name or its stage matches the regex (no --only: every item)
wanted() { [ -z "$ONLY" ] && return 0; [[ "$1" =~ $ONLY ]] || [[ "$2" =~ $ONLY ]]; }
# record ITEM STATUS SECONDS DETAIL: one row of results.tsv (the last row of an item wins), then the summary
record() {
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4:-}" >> "$RES/results.tsv"
  summary; copy_out
}

CARD=""; DRIVER=""; NVCC_V=""; TORCH_V=""; TORCH_COMPILE=0
PY=${PYTHON:-python3}

# ---- summary ----------------------------------------------------------------------------------------------
field() { # field KEY LINE: the value of KEY=... in a RESULT line
  local w
  for w in $2; do case "$w" in "$1="*) echo "${w#*=}"; return ;; esac; done
}
# the last RESULT line of impl IMPL for ARCH and BATCH (and recompute R for the C step) in bench.log
result_line() {
  grep "^RESULT impl=$1 " "$RES/bench.log" 2>/dev/null | grep " arch=$2 " | grep -E " batch=$3( |$)" |
    { if [ -n "${4:-}" ]; then grep " recompute=$4 "; else cat; fi; } | tail -1
}
num() { [[ "${1:-}" =~ ^[0-9]+(\.[0-9]+)?$ ]] && [ "$(awk -v x="$1" 'BEGIN{print (x > 0)}')" = 1 ]; }
ratio() { num "$1" && num "$2" && awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a / b}'; }
pct() { [[ "${1:-}" =~ ^[0-9.]+$ ]] && awk -v x="$1" 'BEGIN{printf "%.1f%%", 100 * x}'; }
gib() { num "$1" && echo "$1" || echo -; }
cell_ips() { # cell_ips LINE ITEM: img/s of a RESULT line, else its status, else the item's result, in parentheses
  local v; v=$(field img_per_s "$1")
  if [ -n "$v" ]; then echo "$v"; return; fi
  if [ -n "$1" ]; then echo "($(field status "$1"))"; return; fi
  v=$(awk -F'\t' -v n="$2" '$1 == n { s = $2 } END { print s }' "$RES/results.tsv")
  if [ -n "$v" ]; then echo "(${v%% (*})"; else echo "-"; fi
}
summary() {
  local S=$RES/summary.md.tmp
  {
    echo "## GPU check $(date -u +%Y-%m-%d) on ${CARD:-(no card name yet)}"
    echo
    echo "\`tools/gpu_check.sh${ARGS:+ $ARGS}\`: ${DRIVER:+driver $DRIVER, }${NVCC_V:+nvcc $NVCC_V, }torch ${TORCH_V:-?}; $(now) s of the ${DEADLINE} s budget used."
    echo
    echo "| stage | result | s |"
    echo "| --- | --- | --- |"
    awk -F'\t' '$1 == "info" || $1 == "build" { r[$1] = "| " $1 " | " $2 (($4 != "") ? ": " $4 : "") " | " $3 " |" }
                END { if ("info" in r) print r["info"]; if ("build" in r) print r["build"] }' "$RES/results.tsv"
    awk -F'\t' '$1 ~ /^(cuda|cuda_ops|dist)\./ { st[$1] = $2; t[$1] = $3; if (!($1 in seen)) { seen[$1] = 1; order[n++] = $1 } }
      END { if (!n) exit; for (i = 0; i < n; i++) { s = st[order[i]]; sec += t[order[i]]
              if (s == "PASS") p++; else if (s ~ /^SKIP/) k++; else if (s ~ /^NOT RUN/) nr++; else f++ }
            printf "| tests | %d passed, %d failed, %d skipped, %d not run | %d |\n", p, f, k, nr, sec }' "$RES/results.tsv"
    awk -F'\t' '$1 ~ /^bench\./ { st[$1] = $2; t[$1] = $3; if (!($1 in seen)) { seen[$1] = 1; order[n++] = $1 } }
      END { if (!n) exit; for (i = 0; i < n; i++) { s = st[order[i]]; sec += t[order[i]]
              if (s == "ok") p++; else if (s ~ /^NOT RUN/) nr++; else if (s ~ /^SKIP/) k++; else f++ }
            printf "| bench | %d ok, %d failed, %d skipped, %d not run | %d |\n", p, f, k, nr, sec }' "$RES/results.tsv"
    if grep -qE '^(cuda|cuda_ops|dist)\.' "$RES/results.tsv"; then
      echo
      echo "### GPU tests"
      echo
      echo "| test | result | s | worst err/tol |"
      echo "| --- | --- | --- | --- |"
      awk -F'\t' '$1 ~ /^(cuda|cuda_ops|dist)\./ { r[$1] = "| " $1 " | " $2 " | " $3 " | " (($4 != "") ? $4 : "-") " |"
                   if (!($1 in seen)) { seen[$1] = 1; order[n++] = $1 } }
                  END { for (i = 0; i < n; i++) print r[order[i]] }' "$RES/results.tsv"
      echo
      echo "err/tol: the case's largest error / tolerance ratio (tolerances.log has every line). A bf16 case between 1"
      echo "and 4 on a first GPU run: recalibrate that bound from the measured ratios, not a bug; far above 4, NaN, or"
      echo "an fp32 case above 1: a bug (docs/cuda-backend.md)."
    fi
    if grep -q '^bench\.' "$RES/results.tsv"; then
      local peak; peak=$(grep '^RESULT impl=c-step ' "$RES/bench.log" | grep -o 'peak_tflops=[0-9.]*' | head -1 | cut -d= -f2)
      echo
      echo "### The whole training step: C (bench_step) vs PyTorch ${TORCH_V:-?}, ${CARD:-?}"
      echo
      if [ "$DRY" = 1 ]; then
        echo "Dry run: tiny sizes (\`$BENCH_ARGS\`), bench_step under the execution layer (or on the CPU backend),"
        echo "PyTorch on the CPU: the figures check the control flow only."
      else
        echo "Per image 2 x 224 px + 8 x 98 px crops, teacher + student + shared head K = 65536, DINO/iBOT/KoLeo, backward,"
        echo "clipping, AdamW, EMA (\`$BENCH_ARGS\`); PyTorch eager = bf16 autocast + SDPA + fused AdamW."
      fi
      echo "MFU against the dense bf16 cublasGemmEx rate bench_step measured: ${peak:-n/a} TFLOP/s (the same denominator"
      echo "for both). r = recomputed activations (PyTorch: the plain step at that batch)."
      echo
      echo "| model | batch | C img/s | C MFU | C ms: teacher / student fwd / bwd / update | C GiB planned / taken | torch eager img/s | eager MFU | torch compile img/s | torch GiB | C / eager | C / compile |"
      echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
      local spec arch b bb rec c e k
      for spec in $BENCH; do
        arch=${spec%%:*}; b=${spec#*:}; bb=${b%r}; rec=0; [ "$bb" != "$b" ] && rec=1
        c=$(result_line c-step "$arch" "$bb" "$rec"); e=$(result_line torch-step-eager "$arch" "$bb")
        k=$(result_line torch-step-compile "$arch" "$bb")
        [ -z "$k" ] && k=$(grep "^RESULT impl=torch-step-compile arch=$arch status=" "$RES/bench.log" | tail -1)
        echo "| $arch | $b | $(cell_ips "$c" "bench.c.$arch.$b") | $(pct "$(field mfu "$c")" || echo -) |" \
             "$([ -n "$(field teacher_ms "$c")" ] && echo "$(field teacher_ms "$c") / $(field student_fwd_ms "$c") / $(field bwd_ms "$c") / $(field update_ms "$c")" || echo -) |" \
             "$(gib "$(field plan_gib "$c")") / $(gib "$(field model_gib "$c")") | $(cell_ips "$e" "bench.torch-eager.$arch.$bb") | $(pct "$(field mfu "$e")" || echo -) | $(cell_ips "$k" "bench.torch-compile.$arch.$bb") |" \
             "$(gib "$(field max_mem_gib "$e")") | $(ratio "$(field img_per_s "$c")" "$(field img_per_s "$e")" || echo -) |" \
             "$(ratio "$(field img_per_s "$c")" "$(field img_per_s "$k")" || echo -) |"
      done
      # where the time goes: bench_step's per-op-family table, predicted (roofline, docs/performance.md) vs measured
      for spec in $BENCH; do
        [ -s "$RES/roofline.${spec%%:*}.${spec#*:}.md" ] || continue
        echo
        echo "#### ${spec%%:*}, batch ${spec#*:}: per op family, roofline prediction vs measured (bench_step)"
        echo
        cat "$RES/roofline.${spec%%:*}.${spec#*:}.md"
      done
      local nr; nr=$(awk -F'\t' '$1 ~ /^bench\./ && $2 ~ /^NOT RUN/ { print "- " $1 ": " $2 }' "$RES/results.tsv")
      [ -n "$nr" ] && { echo; echo "$nr"; }
    fi
    # what a rerun call should take: the items that failed or did not run
    local redo
    redo=$(awk -F'\t' '$1 != "info" && $1 != "build" { st[$1] = $2; if (!($1 in seen)) { seen[$1] = 1; order[n++] = $1 } }
      END { for (i = 0; i < n; i++) { s = st[order[i]]
              if (s != "PASS" && s != "ok" && s !~ /^SKIP/ && order[i] !~ /torch-compile|[(]/) { gsub(/\./, "\\.", order[i]); r = r (r ? "|" : "") order[i] } }
            print r }' "$RES/results.tsv")
    if grep -q '^build	FAILED' "$RES/results.tsv"; then
      echo
      echo "The build failed (build.log): fix it here, \`tools/gpu_check.sh --dry\`, then the whole call again."
    elif [ -n "$redo" ]; then
      echo
      echo "Rerun what failed or did not run (a second call, same carry): \`tools/gpu_check.sh --only '^($redo)\$'\`"
    fi
  } > "$S" 2>/dev/null
  mv -f "$S" "$RES/summary.md"
}

# ---- info -------------------------------------------------------------------------------------------------
have_torch() { "$1" -c 'import torch' >/dev/null 2>&1; }
if [ "$DRY" = 1 ] && ! have_torch "$PY"; then
  for p in /usr/bin/python3 python3; do have_torch "$p" && { PY=$p; break; }; done
fi
say "stage info"
{
  echo "date: $(date -u)"; echo "host: $(uname -a)"; echo "cores: $JOBS"; echo "call: tools/gpu_check.sh $ARGS"
  echo "--- nvidia-smi"; nvidia-smi 2>&1 || echo "nvidia-smi failed"
  nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap,clocks.max.sm --format=csv 2>&1
  echo "--- nvcc"; NV=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null); echo "${NV:-no nvcc}"
  [ -n "$NV" ] && "$NV" --version 2>&1 | tail -2
  SANB=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
  echo "--- compute-sanitizer: ${SANB:-none}"; [ -n "$SANB" ] && "$SANB" --version 2>&1 | tail -1
  echo "--- cmake / gcc / glibc"; cmake --version 2>&1 | head -1; gcc --version 2>&1 | head -1; ldd --version 2>&1 | head -1
  echo "--- libraries (pkg-config)"
  for p in openblas yaml-0.1 json-c libturbojpeg openslide; do printf '%s: ' "$p"; pkg-config --modversion "$p" 2>&1; done
  echo "carried .debs: $(ls build-gpu-deps/*.deb 2>/dev/null | tr '\n' ' ')"
  echo "mpirun: $(command -v mpirun || echo none)"
  echo "--- python / torch ($PY)"
  "$PY" -c 'import sys, torch; g = torch.cuda.is_available(); print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "gpu", g, torch.cuda.get_device_name(0) if g else "", "sdpa", hasattr(torch.nn.functional, "scaled_dot_product_attention"), "compile", hasattr(torch, "compile"))' 2>&1 | tail -1
} > "$RES/info.log" 2>&1
CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
DRIVER=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)
NVCC_V=$(grep -o 'release [0-9.]*' "$RES/info.log" | head -1 | cut -d' ' -f2)
# from the info line: "<python> torch <version> cuda ... compile True|False"
TORCH_V=$(sed -n 's/^[0-9.]* torch \([^ ]*\) cuda .*/\1/p' "$RES/info.log" | head -1)
grep -q '^[0-9.]* torch .* compile True$' "$RES/info.log" && TORCH_COMPILE=1
[ "$DRY" = 1 ] && CARD="cudaemu (CPU execution layer, dry run)"
CARD=${CARD:-no GPU (nvidia-smi failed)}
cat "$RES/info.log"
record info ok "$(now)" "$CARD"

# ---- build ------------------------------------------------------------------------------------------------
find_nvcc() { command -v nvcc 2>/dev/null || { [ -x /usr/local/cuda/bin/nvcc ] && echo /usr/local/cuda/bin/nvcc; }; }
# Python's nvidia packages (the PyTorch wheels' cuBLAS, NCCL, ...): a second place for CUDA libraries
py_nvidia_dirs() { "$PY" -c 'import nvidia; print(" ".join(nvidia.__path__))' 2>/dev/null; }
# find_first NAME DIR...: the first file NAME (a glob) in the DIRs (and up to 3 levels below the pip ones)
find_first() {
  local name=$1 d f; shift
  for d in "$@"; do
    [ -d "$d" ] || continue
    for f in "$d"/$name; do [ -e "$f" ] && { echo "$f"; return 0; }; done
  done
  for d in $(py_nvidia_dirs); do
    f=$(find "$d" -maxdepth 4 -name "$name" 2>/dev/null | sort | head -1)
    [ -n "$f" ] && { echo "$f"; return 0; }
  done
  return 1
}
# a library by name: lib<NAME>.so, else lib<NAME>.so.<version> (the pip wheels ship only those)
find_lib() {
  local n=$1; shift
  find_first "lib$n.so" "$@" || find_first "lib$n.so.*[0-9]" "$@"
}
# .deb files unpacked without installing (dpkg-deb, else Python reading the ar archive)
unpack_deb() {
  if command -v dpkg-deb >/dev/null 2>&1; then dpkg-deb -x "$1" "$2"; return; fi
  "$PY" - "$1" "$2" <<'PY'
import io, sys, tarfile
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"!<arch>\n", "not a .deb"
pos = 8
while pos + 60 <= len(data):
    name, size = data[pos:pos + 16].decode().strip().rstrip("/"), int(data[pos + 48:pos + 58])
    body = data[pos + 60:pos + 60 + size]
    if name.startswith("data.tar"):
        kw = {"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}  # Python >= 3.12: no warning
        tarfile.open(fileobj=io.BytesIO(body)).extractall(sys.argv[2], **kw)
        break
    pos += 60 + size + (size & 1)
PY
}

BIN=""
# The libraries the subset links (pkg-config names), each from the system or from the carried .debs
SUBSET_PKGS="openblas json-c yaml-0.1"
# Headers of the full build's other libraries (OpenSlide, libjpeg-turbo, libpng, libtiff, HDF5, MPI, zlib):
# GPU_CHECK_FORCE_DEBS=1 treats them as missing, as on a bare GPU machine (how the subset is tested here)
SUBSET_NOT_CARRIED='^(openslide|turbojpeg|jpeglib|png|tiffio|hdf5|mpi|zlib)\.h$'
build_subset() {
  local B=$ROOT/build-gpu NVCC CUDA_HOME CUDA_DIRS DEP_C=() DEP_L=() d f missing=""
  NVCC=$(find_nvcc) || { echo "no nvcc"; return 1; }
  CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$NVCC")")")
  CUDA_DIRS=("$CUDA_HOME/lib64" "$CUDA_HOME/lib" "$CUDA_HOME/targets/x86_64-linux/lib" /usr/lib/x86_64-linux-gnu)
  rm -rf "$B" && mkdir -p "$B/obj"
  # OpenBLAS, json-c (common/json.c: checkpoints, safetensors) and libyaml (train/config.c: bench_step
  # --config): the system's when pkg-config has all three, else the carried build-gpu-deps/*.deb
  for d in $SUBSET_PKGS; do pkg-config --exists "$d" 2>/dev/null || missing+=" $d"; done
  if [ "${GPU_CHECK_FORCE_DEBS:-0}" != 1 ] && [ -z "$missing" ]; then
    DEP_C=($(pkg-config --cflags $SUBSET_PKGS)); DEP_L=($(pkg-config --libs $SUBSET_PKGS))
    echo "libraries: the system's (openblas $(pkg-config --modversion openblas), json-c $(pkg-config --modversion json-c), yaml $(pkg-config --modversion yaml-0.1))"
  elif ls build-gpu-deps/*.deb >/dev/null 2>&1; then
    for d in build-gpu-deps/*.deb; do unpack_deb "$d" "$B/deps" || { echo "cannot unpack $d"; return 1; }; done
    local L=$B/deps/usr/lib/x86_64-linux-gnu
    for f in "$L/openblas-pthread/libopenblas.so" "$L/libjson-c.so" "$L/libyaml.so" "$B/deps/usr/include/json-c/json_tokener.h" "$B/deps/usr/include/yaml.h"; do
      [ -e "$f" ] || { echo "the carried .debs lack $f: run tools/gpu_check.sh --fetch-deps again"; return 1; }
    done
    DEP_C=(-I"$B/deps/usr/include/x86_64-linux-gnu/openblas-pthread" -I"$B/deps/usr/include")
    DEP_L=(-L"$L/openblas-pthread" -L"$L" -Wl,-rpath,"$L/openblas-pthread" -Wl,-rpath,"$L" -lopenblas -ljson-c -lyaml)
    echo "libraries: the carried build-gpu-deps/*.deb (openblas, json-c, yaml), unpacked in $B/deps${missing:+; the system lacks$missing}"
  else
    echo "the system lacks$missing (pkg-config) and there are no carried build-gpu-deps/*.deb: run"
    echo "tools/gpu_check.sh --fetch-deps on the build machine and name build-gpu-deps in the lease call's carry"
    return 1
  fi
  # the CUDA libraries: the toolkit's, else Python's nvidia wheels (PyTorch's)
  local LIBS=() n p INC=(-I"$CUDA_HOME/include")
  for n in cudart cublas cublasLt; do
    p=$(find_lib "$n" "${CUDA_DIRS[@]}") || { echo "no lib$n.so in the toolkit or Python's nvidia packages"; return 1; }
    LIBS+=("$p" -Wl,-rpath,"$(dirname "$p")"); echo "$n: $p"
  done
  f=$(find_first cublas_v2.h "$CUDA_HOME/include") || { echo "no cublas_v2.h"; return 1; }
  [ "$(dirname "$f")" != "$CUDA_HOME/include" ] && INC+=(-I"$(dirname "$f")")
  # NCCL (dist/nccl.cu, test_dist's NCCL cases): the toolkit's or the nvidia-nccl wheel's
  local NCCL_H NCCL_SO HAVE_NCCL=0 CUS=(model/cuda/*.cu)
  if NCCL_H=$(find_first nccl.h "$CUDA_HOME/include" /usr/include) && NCCL_SO=$(find_lib nccl "${CUDA_DIRS[@]}"); then
    HAVE_NCCL=1; INC+=(-I"$(dirname "$NCCL_H")"); LIBS+=("$NCCL_SO" -Wl,-rpath,"$(dirname "$NCCL_SO")"); CUS+=(dist/nccl.cu)
    echo "NCCL: $NCCL_H, $NCCL_SO"
  else
    echo "NCCL: not found (test_dist's NCCL cases are not built)"
  fi
  local GENCODE=() a
  for a in ${ARCHS//;/ }; do GENCODE+=(-gencode "arch=compute_$a,code=sm_$a"); done
  # DINO_GPU_SUBSET: test_cuda_ops leaves out its trainer cases (they read JPEG tiles: no data/decode.c here).
  # -ffunction-sections + --gc-sections: a program keeps only the functions it reaches, so bench_step can
  # take train_ssl_config from train/train.c without the data pipeline the rest of train.c calls.
  local CFLAGS=(-O2 -march=native -std=gnu17 -D_GNU_SOURCE -DNDEBUG -fopenmp -Wall -Wno-unused-parameter -I.
                "${INC[@]}" "${DEP_C[@]}" -DDINO_HAVE_CUDA=1 -DDINO_GPU_SUBSET=1 -DDINO_SOURCE_DIR="\"$ROOT\""
                -ffunction-sections -fdata-sections)
  [ $HAVE_NCCL = 1 ] && CFLAGS+=(-DDINO_HAVE_NCCL=1)
  # The library sources: libdino's (cmake/dino_library.cmake: every .c under common/ model/ model/cpu/ data/
  # dist/ train/ but train/dinotrain.c), less each file that includes a header this machine lacks (gcc -M
  # -MG lists a missing header as a path that does not exist): data/decode.c, data/wsi.c, ... on a bare
  # machine. A left-out file a program needs shows as an undefined reference at the link below.
  local srcs=() left=() deps h
  for f in common/*.c model/*.c model/cpu/*.c data/*.c dist/*.c train/*.c; do
    [ "$f" = train/dinotrain.c ] && continue
    deps=$("${CC:-gcc}" "${CFLAGS[@]}" -M -MG "$f") || { echo "gcc -M failed on $f"; return 1; }
    deps=$(echo "$deps" | sed 's/\\$//' | tr ' ' '\n' | sed '1d;/^$/d')
    h=""
    while read -r d; do
      if [ ! -e "$d" ] || { [ "${GPU_CHECK_FORCE_DEBS:-0}" = 1 ] && [[ "$(basename "$d")" =~ $SUBSET_NOT_CARRIED ]]; }; then
        h=$(basename "$d"); break
      fi
    done <<< "$deps"
    if [ -n "$h" ]; then left+=("$f ($h)"); else srcs+=("$f"); fi
  done
  echo "library sources: ${#srcs[@]} compiled; left out (a header missing here): ${left[*]:-none}"
  local objs=() o
  # a pool of $JOBS compiles; a failure leaves a marker
  run_job() { while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done; { "$@" || touch "$B/FAILED"; } & }
  echo "nvcc $("$NVCC" --version | grep -o 'release [0-9.]*'), ${GENCODE[*]}, $JOBS jobs"
  for f in "${CUS[@]}"; do
    o=$B/obj/$(echo "$f" | tr / _).o; objs+=("$o")
    run_job "$NVCC" -O2 -std=c++17 -lineinfo "${GENCODE[@]}" -I. "${INC[@]}" -Xcompiler=-Wall,-Wno-unused-parameter -c "$f" -o "$o"
  done
  for f in "${srcs[@]}"; do
    o=$B/obj/$(echo "$f" | tr / _).o; objs+=("$o")
    run_job "${CC:-gcc}" "${CFLAGS[@]}" -c "$f" -o "$o"
  done
  wait
  [ -e "$B/FAILED" ] && { echo "compilation failed (above)"; return 1; }
  # one archive: the linker takes the members a program needs (the CUDA objects and libdino call each other)
  ar rcs "$B/libdino_gpu.a" "${objs[@]}" || return 1
  local LINK=("$B/libdino_gpu.a" -Wl,--gc-sections "${LIBS[@]}" "${DEP_L[@]}" -fopenmp -lstdc++ -lm -lpthread -ldl -lrt)
  local t progs=(tests/test_cuda.c tests/test_cuda_ops.c tools/bench_step.c)
  [ $HAVE_NCCL = 1 ] && progs+=(tests/test_dist.c)
  for f in "${progs[@]}"; do
    t=$(basename "$f" .c); f=("$f"); [[ "$t" == test_* ]] && f+=(tests/harness.c)
    run_job "${CC:-gcc}" "${CFLAGS[@]}" "${f[@]}" "${LINK[@]}" -o "$B/$t"
  done
  wait
  [ -e "$B/FAILED" ] && { echo "linking failed (above)"; return 1; }
  for t in "${progs[@]}"; do t=$(basename "$t" .c); echo "$t: $(ldd "$B/$t" 2>/dev/null | grep -E 'openblas|json-c|yaml|cublas\.|nccl' | awk '{print $3}' | tr '\n' ' ')"; done
  echo "SUBSET BUILD OK"
}
build_cmake() {
  local B=$ROOT/build-gpu-cmake hints=() f
  # NCCL from Python's nvidia wheel when the toolkit has none (CMakeLists.txt looks beside the toolkit)
  if f=$(find_first nccl.h); then hints+=(-DNCCL_INCLUDE_DIR="$(dirname "$f")"); fi
  if f=$(find_lib nccl); then hints+=(-DNCCL_LIB="$f"); fi
  cmake -S . -B "$B" -DCMAKE_BUILD_TYPE=Release -DDINO_CUDA_ARCHS="$ARCHS" -DDINO_NO_CUDAEMU=ON "${hints[@]}" &&
    cmake --build "$B" -j "$JOBS" --target test_cuda test_cuda_ops test_dist bench_step && echo "CMAKE BUILD OK"
}

# --only info: the machine's info alone; any other call builds (a fresh machine has nothing)
if [ "$ONLY" != info ]; then
  say "stage build"
  tb=$(now)
  if [ "$DRY" = 1 ]; then
    BIN=$ROOT/build; how="dry: the existing build/ (cudaemu_* programs)"
    if [ "$DRY_BUILD" = 1 ]; then
      tg=(cudaemu_cuda_ops cudaemu_cuda cudaemu_dist)
      grep -q 'cudaemu_bench_step' build/Makefile 2>/dev/null && tg+=(cudaemu_bench_step)
      how="dry: cmake --build build --target ${tg[*]}"
      timeout "$(cap 1200)" cmake --build build -j 2 --target "${tg[@]}" > "$RES/build.log" 2>&1
    fi
    miss=""; for t in cudaemu_cuda_ops cudaemu_cuda cudaemu_dist; do [ -x "build/$t" ] || miss+=" $t"; done
    echo "$how; missing:${miss:- none}" >> "$RES/build.log"
    if [ -z "$miss" ]; then record build ok "$(( $(now) - tb ))" "$how"; else record build FAILED "$(( $(now) - tb ))" "missing:$miss"; BIN=""; fi
  else
    mode=${GPU_CHECK_BUILD:-auto}
    if [ "$mode" = auto ]; then
      mode=subset # GPU_CHECK_FORCE_DEBS=1: the bare machine's build, even here
      [ "${GPU_CHECK_FORCE_DEBS:-0}" != 1 ] && pkg-config --exists openblas yaml-0.1 json-c libturbojpeg openslide 2>/dev/null && mode=cmake
    fi
    # each build runs under timeout (which ends its whole process group: the compiles too)
    export ROOT PY ARCHS JOBS
    export SUBSET_PKGS SUBSET_NOT_CARRIED
    export -f build_subset build_cmake find_nvcc find_first find_lib py_nvidia_dirs unpack_deb
    ok=0
    if [ "$mode" = cmake ]; then
      echo "=== CMake build (the machine has every library of the full build), sm $ARCHS" >> "$RES/build.log"
      timeout -k 5 "$(cap "$BUILD_TIMEOUT")" bash -c build_cmake >> "$RES/build.log" 2>&1 &&
        { ok=1; BIN=$ROOT/build-gpu-cmake; how="CMake, sm $ARCHS, targets test_cuda test_cuda_ops test_dist bench_step"; }
      [ $ok = 1 ] || echo "=== the CMake build failed: the GPU subset instead" >> "$RES/build.log"
    fi
    if [ $ok = 0 ]; then
      echo "=== GPU subset build, sm $ARCHS" >> "$RES/build.log"
      timeout -k 5 "$(cap "$BUILD_TIMEOUT")" bash -c build_subset >> "$RES/build.log" 2>&1 &&
        { ok=1; BIN=$ROOT/build-gpu; how="GPU subset, sm $ARCHS, $(grep -m1 '^libraries:' "$RES/build.log" | sed 's/, unpacked in .*//'); $(grep -m1 '^NCCL:' "$RES/build.log")"; }
    fi
    if [ $ok = 1 ]; then record build ok "$(( $(now) - tb ))" "$how"
    else record build FAILED "$(( $(now) - tb ))" "see build.log"; tail -30 "$RES/build.log"; fi
  fi
  say "build: $(tail -1 "$RES/results.tsv" | cut -f2,4)"
fi
if [ "$BUILD_ONLY" = 1 ]; then
  summary; copy_out; trap - EXIT
  [ -n "$BIN" ] && { say "--build-only: the programs are in $BIN"; exit 0; }
  exit 1
fi

# ---- GPU tests ----------------------------------------------------------------------------------------------
export DINO_REQUIRE_GPU=1 DINO_SOURCE_DIR=$ROOT OMP_NUM_THREADS=${OMP_NUM_THREADS:-$JOBS} OMP_WAIT_POLICY=passive
# NCCL: a hung collective fails its case after 30 s (test_dist's NCCL cases and the layer's stand-in)
export DINO_DIST_TIMEOUT_S=${DINO_DIST_TIMEOUT_S:-30} CUDAEMU_NCCL_TIMEOUT_S=${CUDAEMU_NCCL_TIMEOUT_S:-30}
if [ "$DRY" = 1 ]; then
  export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=0} UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
  PFX=cudaemu_
else
  PFX=test_
fi
SAN=()
if [ "$SANITIZE" = 1 ]; then
  s=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
  [ -n "$s" ] && SAN=("$s" --tool memcheck --error-exitcode 99 --print-limit 20) && TEST_TIMEOUT=${GPU_CHECK_TEST_TIMEOUT_S:-300}
  [ -z "$s" ] && say "--sanitize: no compute-sanitizer here, the tests run plain"
fi
# the largest err/tol ratio in a case's output (nan when one is not a number)
worst_ratio() {
  grep -o 'err/tol=[^ ]*' "$1" | cut -d= -f2 |
    awk '{ v = tolower($1); if (v ~ /nan|inf/) bad = 1; else if (v + 0 > m) m = v + 0; n++ }
         END { if (n) { if (bad) print "nan"; else printf "%.3g\n", m } }'
}
# the benchmark's items: bench.c.ARCH.BATCH[r], bench.torch-eager.ARCH.BATCH, bench.torch-compile.ARCH.BATCH
BENCH_WANTED=0
for spec in $BENCH; do
  for k in c torch-eager torch-compile; do b=${spec#*:}; [ $k != c ] && b=${b%r}
    wanted "bench.$k.${spec%%:*}.$b" bench && BENCH_WANTED=1
  done
done
[ "$BENCH_WANTED" = 0 ] && TESTS_UNTIL=$DEADLINE
if [ -z "$BIN" ] && [ "$ONLY" != info ]; then
  wanted "cuda_ops." test && record "cuda_ops.(every case)" "NOT RUN (no build)" 0
elif [ -n "$BIN" ]; then
  cases=()
  for g in cuda_ops cuda dist; do
    if [ ! -x "$BIN/$PFX$g" ]; then
      if [ $g = dist ]; then wanted "dist.nccl" test && record "dist.(NCCL cases)" "SKIP (test_dist not built: no NCCL found)" 0
      else wanted "$g." test && record "$g.(every case)" "FAIL ($PFX$g not built)" 0; fi
      continue
    fi
    for c in $("$BIN/$PFX$g" --list 2>/dev/null); do
      case "$c" in worker_*) continue ;; esac
      [ "$g" = dist ] && [[ "$c" != *nccl* ]] && continue
      wanted "$g.$c" test || continue
      [ "$DRY" = 1 ] && [ -z "$ONLY" ] && ! [[ "$g.$c" =~ $DRY_TESTS ]] && continue
      cases+=("$g.$c")
    done
  done
  [ ${#cases[@]} -gt 0 ] && say "stage test: ${#cases[@]} cases, none started after ${TESTS_UNTIL} s"
  for gc in "${cases[@]}"; do
    g=${gc%%.*}; c=${gc#*.}
    avail=$(( TESTS_UNTIL - $(now) )); [ "$(left)" -lt "$avail" ] && avail=$(left)
    if [ "$avail" -lt 15 ]; then record "$gc" "NOT RUN (time)" 0; continue; fi
    t=$TEST_TIMEOUT; [ "$avail" -lt "$t" ] && t=$avail
    ts=$(date +%s.%N)
    ( cd "$BIN" && timeout -k 5 "$t" "${SAN[@]}" "./$PFX$g" "$c" ) > "$RES/case.tmp" 2>&1
    rc=$?
    sec=$(awk -v a="$ts" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b - a}')
    { echo "=== $gc (rc=$rc, $sec s)"; cat "$RES/case.tmp"; } >> "$RES/tests.log"
    grep -E 'err/tol|normwise' "$RES/case.tmp" | sed "s|^|$gc: |" >> "$RES/tolerances.log"
    w=$(worst_ratio "$RES/case.tmp")
    case $rc in
      0) st=PASS ;;
      77) st="SKIP ($(grep -m1 '^SKIP' "$RES/case.tmp" | sed 's/^SKIP [^:]*: //' | cut -c1-80))" ;;
      124|137) if [ "$t" -lt "$TEST_TIMEOUT" ]; then st="NOT RUN (cut by the deadline after $t s)"; else st="TIMEOUT ($t s)"; fi ;;
      99) st="FAIL (compute-sanitizer: $(grep -m1 'ERROR SUMMARY' "$RES/case.tmp"))" ;;
      *) st="FAIL (rc $rc)" ;;
    esac
    record "$gc" "$st" "$sec" "$w"
    say "  $gc: $st, $sec s${w:+, worst err/tol $w}"
    # a failure's own lines go to the console too (the device tool returns only the output's tail)
    case $rc in 0|77) ;; *) grep -v 'err/tol=0\.0' "$RES/case.tmp" | tail -15 | sed 's/^/      /' ;; esac
  done
fi

# ---- the whole training step: C and PyTorch -------------------------------------------------------------------
PEAK=""
# bench_c ARCH BATCH REC: bench_step on the GPU (dry: under the execution layer, else the CPU backend)
bench_c() {
  # the per-op roofline table at the end of bench_step's output predicts for this card
  local card=h100; [[ "$CARD" == *H200* ]] && card=h200
  local prog=$BIN/bench_step be=cuda args=(--arch "$1" --batch "$2" $BENCH_ARGS $PEAK_ARGS --card "$card")
  [ "$3" = 1 ] && args+=(--recompute)
  if [ "$DRY" = 1 ]; then
    prog=${GPU_CHECK_DRY_BENCH_BIN:-$ROOT/build/cudaemu_bench_step}
    [ -x "$prog" ] || { prog=$ROOT/build/bench_step; be=cpu; args=(--arch "$1" --batch "$2" $BENCH_ARGS --card "$card"); }
  fi
  echo "=== $prog --backend $be ${args[*]}"
  timeout -k 5 "$4" "$prog" --backend "$be" "${args[@]}"
}
bench_torch() { # MODE ARCH BATCH TIMEOUT
  local extra=(); [ "$DRY" = 1 ] && extra=(--threads "$JOBS")
  echo "=== $PY tests/torch_ref/bench_step_torch.py --modes $1 --arch $2 --batch $3 $BENCH_ARGS ${PEAK:+--peak-tflops $PEAK}"
  PYTHONUNBUFFERED=1 timeout -k 5 "$4" "$PY" tests/torch_ref/bench_step_torch.py --modes "$1" --arch "$2" --batch "$3" \
    $BENCH_ARGS ${PEAK:+--peak-tflops "$PEAK"} "${extra[@]}"
}
# run_bench ITEM KIND ARCH BATCH REC CAP MIN: one benchmark run into bench.log and one results row
run_bench() {
  local item=$1 kind=$2 arch=$3 b=$4 rec=$5 capv=$6 min=$7 t rc line st impl ts sec
  if [ -z "$BIN" ] && [ "$kind" = c ]; then record "$item" "NOT RUN (no build)" 0; return; fi
  if [ "$(left)" -lt "$min" ]; then record "$item" "NOT RUN (time: $(left) s left, needs ~$min)" 0; return; fi
  t=$(cap "$capv")
  ts=$(now)
  if [ "$kind" = c ]; then bench_c "$arch" "$b" "$rec" "$t"; else bench_torch "$kind" "$arch" "$b" "$t"; fi > "$RES/bench.tmp" 2>&1
  rc=$?
  sec=$(( $(now) - ts ))
  cat "$RES/bench.tmp" >> "$RES/bench.log"
  # bench_step's per-op-family roofline table, for the summary
  [ "$kind" = c ] && sed -n '/^roofline per op family/,/^ROOFLINE /p' "$RES/bench.tmp" | grep -v '^ROOFLINE ' > "$RES/roofline.$arch.$b$([ "$rec" = 1 ] && echo r).md"
  impl=c-step; [ "$kind" != c ] && impl=torch-step-$kind
  line=$(grep "^RESULT impl=$impl " "$RES/bench.tmp" | tail -1)
  st=$(field status "$line")
  case "$st" in no-*) st="SKIP ($st)" ;; esac
  if [ -z "$line" ]; then
    st="failed (rc $rc$([ $rc = 124 ] || [ $rc = 137 ] && echo ", timeout $t s"))"
    echo "RESULT impl=$impl arch=$arch batch=$b recompute=$rec status=failed(rc=$rc)" >> "$RES/bench.log"
    tail -8 "$RES/bench.tmp" | sed 's/^/      /'
  fi
  v=$(field img_per_s "$line")
  record "$item" "$st" "$sec" "${v:+$v img/s}"
  say "  $item: $st, $sec s$(v=$(field img_per_s "$line"); [ -n "$v" ] && echo ", $v img/s")"
  if [ "$kind" = c ] && [ -z "$PEAK" ]; then
    PEAK=$(field peak_tflops "$line"); num "$PEAK" || PEAK=""
  fi
}
if [ "$BENCH_WANTED" = 1 ]; then
  say "stage bench: $BENCH ($(left) s left)"
  done_torch=" "
  # C then PyTorch eager, model by model (a call cut short keeps pairs); torch.compile afterwards, if time is left
  for spec in $BENCH; do
    arch=${spec%%:*}; b=${spec#*:}; bb=${b%r}; rec=0; [ "$bb" != "$b" ] && rec=1
    wanted "bench.c.$arch.$b" bench && run_bench "bench.c.$arch.$b" c "$arch" "$bb" $rec 150 30
    if wanted "bench.torch-eager.$arch.$bb" bench && [[ "$done_torch" != *" $arch.$bb "* ]]; then
      if [ -n "$TORCH_V" ]; then run_bench "bench.torch-eager.$arch.$bb" eager "$arch" "$bb" 0 180 40
      else record "bench.torch-eager.$arch.$bb" "NOT RUN (no torch in $PY)" 0; fi
      done_torch+="$arch.$bb "
    fi
  done
  done_torch=" "
  for spec in $BENCH; do
    arch=${spec%%:*}; b=${spec#*:}; bb=${b%r}
    [[ "$done_torch" == *" $arch.$bb "* ]] && continue
    done_torch+="$arch.$bb "
    wanted "bench.torch-compile.$arch.$bb" bench || continue
    if [ -z "$TORCH_V" ]; then record "bench.torch-compile.$arch.$bb" "NOT RUN (no torch in $PY)" 0; continue; fi
    if [ "$TORCH_COMPILE" != 1 ]; then record "bench.torch-compile.$arch.$bb" "SKIP (torch $TORCH_V has no torch.compile)" 0; continue; fi
    # torch.compile recompiles per crop shape: a minute or more for ViT-L
    run_bench "bench.torch-compile.$arch.$bb" compile "$arch" "$bb" 0 300 $([ "$DRY" = 1 ] && echo 30 || echo 150)
  done
fi

say "summary ($(now) s)"
summary; copy_out
trap - EXIT
echo; cat "$RES/summary.md"
exit 0
