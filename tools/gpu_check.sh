#!/usr/bin/env bash
# Everything a GPU lease should run, in one script: machine info, build, the GPU tests (ctest -R cuda:
# every op of the backend, the objective's ops, two SSL steps and the trainer against the CPU), a
# 50-iteration demo training run on cuda and on cpu (stage train), the ViT benchmark on the CUDA
# backend, the same model in PyTorch, and a summary table. Each stage's failure is
# recorded in the table and never stops the other stages. See docs/cuda-backend.md.
#
#   tools/gpu_check.sh                         all stages (info,build,test,train,bench,torch,summary)
#   tools/gpu_check.sh --stages info,build,test,summary   then, in further calls (10-min limit each):
#   tools/gpu_check.sh --stages info,train,bench,summary
#   tools/gpu_check.sh --stages info,torch,summary
#   tools/gpu_check.sh --stages info,step,summary     the whole training step, C and PyTorch
#   tools/gpu_check.sh --stages summary --merge DIR1 --merge DIR2   one table from both calls' $OUT
#                                              folders (anywhere, no GPU needed)
#   tools/gpu_check.sh --quick                 one batch size per model
#   tools/gpu_check.sh --stages sanitize,summary   compute-sanitizer memcheck of the smaller GPU tests
#   tools/gpu_check.sh --fetch-deps            ON THE BUILD MACHINE (has network): downloads the
#                                              OpenBLAS .debs into build-gpu-deps/ for a GPU machine
#                                              without them; carry build-gpu-deps with the lease.
#
# Results accumulate in build-gpu-check/ (kept between calls on a warm machine) and are copied to
# $OUT (or --out DIR) after every call: summary.md, status.env and one log per stage (<= 8 files).
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD

STAGES="info,build,test,train,bench,torch,step,summary"
QUICK=0
MERGE=()
RES=$ROOT/build-gpu-check
DEST=${OUT:-}
ARCHS_CUDA=${DINO_CUDA_ARCHS:-"80;90"}
while [ $# -gt 0 ]; do
  case "$1" in
    --stages) STAGES=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --out) DEST=$2; shift 2 ;;
    --merge) MERGE+=("$2"); shift 2 ;;
    --fetch-deps) # build-gpu-deps/ is ignored (/build-*/), so it must be named in the lease's carry
      mkdir -p build-gpu-deps && cd build-gpu-deps || exit 1
      apt-get download libopenblas0-pthread libopenblas-pthread-dev libgfortran5 libquadmath0 || exit 1
      ls -la; exit 0 ;;
    -h|--help) sed -n 2,20p "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ "$QUICK" = 1 ]; then
  C_BATCH_S="32"; C_BATCH_L="16"
  STEP_S="32"; STEP_L="16 64r"
else
  C_BATCH_S="16 32 64"; C_BATCH_L="8 16 32"
  # r: activations recomputed. ViT-L holds 55 GiB at 32 images stored, 102 GiB at 64 (dinotrain
  # --plan-memory): 64 runs recomputed, 32 both ways.
  STEP_S="32 64"; STEP_L="16 32 32r 64r"
fi
# torch.compile recompiles per shape (a minute or more for ViT-L): compile at one batch per model.
TC_BATCH_S="32"; TC_BATCH_L="16"
JOBS=$(nproc 2>/dev/null || echo 4)
mkdir -p "$RES"
STATUS=$RES/status.env
touch "$STATUS"

has_stage() { case ",$STAGES," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
set_status() { # stage value: one line per stage, the last one wins
  grep -v "^$1=" "$STATUS" > "$STATUS.tmp" 2>/dev/null; mv "$STATUS.tmp" "$STATUS"
  printf '%s=%q\n' "$1" "$2" >> "$STATUS"
}
get_status() { ( . "$STATUS" 2>/dev/null; eval "echo \${$1:-not run}" ) }
copy_out() {
  [ -n "$DEST" ] || return 0
  mkdir -p "$DEST" && cp -f "$RES"/*.md "$RES"/*.log "$RES"/*.env "$DEST"/ 2>/dev/null
  return 0
}
trap copy_out EXIT
log() { copy_out; echo "[gpu_check $(date +%H:%M:%S)] $*"; } # each stage starts with a log line: results so far go out

# Results of earlier calls (e.g. the $OUT folders of two lease calls, on any machine): their logs and
# statuses are merged into build-gpu-check/ before the stages run, so `--stages summary --merge A
# --merge B` makes one table of both.
for m in "${MERGE[@]}"; do
  [ -d "$m" ] || { echo "gpu_check: --merge $m: no such folder" >&2; continue; }
  for f in info.log build.log tests.log sanitize.log train.log bench_c.log bench_torch.log bench_step.log; do
    [ -s "$m/$f" ] && cp -f "$m/$f" "$RES/$f"
  done
  [ -s "$m/status.env" ] && cat "$m/status.env" >> "$STATUS" # later lines win when sourced
done

# ---- info -------------------------------------------------------------------------------------------
if has_stage info; then
  log "stage info"
  {
    echo "date: $(date -u)"; echo "host: $(uname -a)"; echo "cores: $JOBS"
    echo "--- nvidia-smi"; nvidia-smi 2>&1 || echo "nvidia-smi failed"
    nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap,clocks.max.sm --format=csv 2>&1
    echo "--- nvcc"; (command -v nvcc || ls /usr/local/cuda/bin/nvcc) 2>&1; (nvcc --version || /usr/local/cuda/bin/nvcc --version) 2>&1 | tail -2
    echo "--- cmake"; cmake --version 2>&1 | head -1
    echo "--- libraries the full build needs"
    for p in openblas yaml-0.1 libturbojpeg openslide; do printf '%s: ' "$p"; pkg-config --modversion "$p" 2>&1; done
    echo "--- python / torch"
    for py in python3 /usr/bin/python3; do
      command -v "$py" >/dev/null || continue
      printf '%s: ' "$py"
      "$py" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.is_available(), "sdpa", hasattr(torch.nn.functional, "scaled_dot_product_attention"), "compile", hasattr(torch, "compile"))' 2>&1 | tail -1
    done
  } > "$RES/info.log" 2>&1
  cat "$RES/info.log"
  GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
  set_status GPU "${GPU:-none (nvidia-smi failed)}"
  TORCH=$(python3 -c 'import torch; print(torch.__version__, "cuda" if torch.cuda.is_available() else "no-gpu")' 2>/dev/null)
  set_status TORCH "${TORCH:-absent}"
fi

# ---- build ------------------------------------------------------------------------------------------
# The full CMake build needs the project's CPU dependencies (OpenBLAS, libyaml, turbojpeg, OpenSlide).
# A GPU image may lack them: then build only what the GPU checks need (common, model, model/cpu,
# model/cuda, the GPU tests and the benchmark) with OpenBLAS from the system or from carried .debs.
BIN=""
find_nvcc() { command -v nvcc 2>/dev/null || { [ -x /usr/local/cuda/bin/nvcc ] && echo /usr/local/cuda/bin/nvcc; }; }

build_full() {
  [ "${GPU_CHECK_FORCE_SUBSET:-0}" = 1 ] && { echo "GPU_CHECK_FORCE_SUBSET=1: skipping the full build"; return 1; }
  cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DDINO_CUDA_ARCHS="$ARCHS_CUDA" && cmake --build build -j "$JOBS"
}

build_minimal() {
  local NVCC CUDA_HOME B=build-gpu-min INC=() LIBS=() d
  NVCC=$(find_nvcc) || { echo "no nvcc"; return 1; }
  CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$NVCC")")")
  if pkg-config --exists openblas 2>/dev/null; then
    INC=($(pkg-config --cflags openblas)); LIBS=($(pkg-config --libs openblas))
  elif ls build-gpu-deps/*.deb >/dev/null 2>&1; then
    rm -rf "$B/deps" && mkdir -p "$B/deps"
    for d in build-gpu-deps/*.deb; do dpkg -x "$d" "$B/deps" || return 1; done
    local L=$ROOT/$B/deps/usr/lib/x86_64-linux-gnu
    INC=(-I"$ROOT/$B/deps/usr/include/x86_64-linux-gnu/openblas-pthread")
    LIBS=(-L"$L/openblas-pthread" -L"$L" -Wl,-rpath,"$L/openblas-pthread" -Wl,-rpath,"$L" -lopenblas)
    export LD_LIBRARY_PATH="$L/openblas-pthread:$L:${LD_LIBRARY_PATH:-}"
  else
    echo "no OpenBLAS here (pkg-config openblas) and no carried build-gpu-deps/: run tools/gpu_check.sh --fetch-deps"
    echo "on the build machine and carry build-gpu-deps with the lease"
    return 1
  fi
  mkdir -p "$B/obj"
  local GENCODE=() a
  for a in ${ARCHS_CUDA//;/ }; do GENCODE+=(-gencode "arch=compute_$a,code=sm_$a"); done
  # DINO_GPU_SUBSET: test_cuda_ops leaves out its trainer cases (no data/ or trainer here); the SSL step
  # cases need train/ssl_step.c, optim.c, schedule.c and dist/dist.c (built without MPI: one process)
  local CFLAGS=(-O2 -std=c17 -D_GNU_SOURCE -DNDEBUG -fopenmp -Wall -Wno-unused-parameter -I. "${INC[@]}" -DDINO_HAVE_CUDA=1
                -DDINO_GPU_SUBSET=1 -DDINO_SOURCE_DIR="\"$ROOT\"")
  local objs=() pids=() f o rc=0
  for f in model/cuda/*.cu; do
    o=$B/obj/$(basename "$f").o; objs+=("$o")
    "$NVCC" -O2 -std=c++17 -lineinfo "${GENCODE[@]}" -I. -Xcompiler=-Wall -c "$f" -o "$o" & pids+=($!)
  done
  for f in common/*.c model/*.c model/cpu/*.c train/ssl_step.c train/optim.c train/schedule.c dist/dist.c data/masking.c; do
    o=$B/obj/$(echo "$f" | tr / _).o; objs+=("$o")
    "${CC:-gcc}" "${CFLAGS[@]}" -c "$f" -o "$o" & pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  [ $rc = 0 ] || return 1
  local LINK=(-L"$CUDA_HOME/lib64" -L"$CUDA_HOME/lib" -L"$CUDA_HOME/targets/x86_64-linux/lib"
              -Wl,-rpath,"$CUDA_HOME/lib64" -Wl,-rpath,"$CUDA_HOME/lib" -Wl,-rpath,"$CUDA_HOME/targets/x86_64-linux/lib"
              -lcublasLt -lcublas -lcudart
              "${LIBS[@]}" -fopenmp -lstdc++ -lm -lpthread)
  for t in test_cuda test_cuda_ops; do
    "${CC:-gcc}" "${CFLAGS[@]}" tests/$t.c tests/harness.c "${objs[@]}" "${LINK[@]}" -o $B/$t || return 1
  done
  "${CC:-gcc}" "${CFLAGS[@]}" tools/bench_vit_gpu.c "${objs[@]}" "${LINK[@]}" -o $B/bench_vit_gpu || return 1
  "${CC:-gcc}" "${CFLAGS[@]}" tools/bench_step.c "${objs[@]}" "${LINK[@]}" -o $B/bench_step || return 1
}

if has_stage build; then
  log "stage build (full CMake build first, the GPU subset if that fails)"
  {
    echo "=== full CMake build"
    if build_full; then echo "FULL BUILD OK"; else echo "FULL BUILD FAILED"; fi
  } > "$RES/build.log" 2>&1
  if grep -q "FULL BUILD OK" "$RES/build.log" && [ -x build/test_cuda_ops ] && [ -x build/bench_vit_gpu ] &&
     grep -qs "DINO_HAVE_CUDA" build/CMakeFiles/test_cuda_ops.dir/flags.make; then
    set_status BUILD "ok (full CMake build, CUDA archs $ARCHS_CUDA)"; set_status BIN build
  else
    { echo "=== GPU subset build (model + model/cpu + model/cuda + GPU tests + benchmark)"; build_minimal && echo "SUBSET BUILD OK"; } >> "$RES/build.log" 2>&1
    if grep -q "SUBSET BUILD OK" "$RES/build.log"; then
      set_status BUILD "ok (GPU subset; the full CMake build failed, see build.log)"; set_status BIN build-gpu-min
    else
      set_status BUILD "FAILED (see build.log)"; set_status BIN ""
    fi
  fi
  tail -25 "$RES/build.log"
fi
BIN=$(get_status BIN); [ "$BIN" = "not run" ] && BIN=""
if [ "$BIN" = build-gpu-min ] && [ -d build-gpu-min/deps ]; then
  L=$ROOT/build-gpu-min/deps/usr/lib/x86_64-linux-gnu; export LD_LIBRARY_PATH="$L/openblas-pthread:$L:${LD_LIBRARY_PATH:-}"
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$JOBS}
# The stages below run on the GPU: a program that finds no device (a driver too old for the runtime, an
# empty CUDA_VISIBLE_DEVICES) exits 1 with the CUDA error instead of its tests skipping as if green
# (dino_cuda_device_count, model/cuda/cuda_device.cu).
export DINO_REQUIRE_GPU=${DINO_REQUIRE_GPU:-1}

# ---- GPU tests ----------------------------------------------------------------------------------------
if has_stage test; then
  log "stage test"
  if [ -z "$BIN" ]; then
    set_status TESTS "not run (no build)"
  else
    pass=0; fail=0; skip=0; failed_names=""
    : > "$RES/tests.log"
    for t in test_cuda test_cuda_ops; do
      [ -x "$BIN/$t" ] || { fail=$((fail + 1)); failed_names+=" $t(missing)"; }
    done
    # every case named like a GPU test (ctest -R 'cuda|gpu'): cuda.*, cuda_ops.*, dist.*_gpu, ...
    for tp in "$BIN"/test_*; do
      t=$(basename "$tp"); [ -x "$tp" ] && [ -f "$tp" ] || continue
      for c in $("$tp" --list 2>/dev/null); do
        [[ "${t#test_}.$c" =~ ${GPU_TEST_REGEX:-cuda|gpu} ]] || continue
        echo "=== $t $c" >> "$RES/tests.log"
        ( cd "$BIN" && DINO_SOURCE_DIR=$ROOT timeout 600 "./$t" "$c" ) > "$RES/test_one.tmp" 2>&1
        rc=$?
        cat "$RES/test_one.tmp" >> "$RES/tests.log"
        # a failure's own output goes to the console too (the lease returns only the output's tail)
        [ $rc = 0 ] || [ $rc = 77 ] || { echo "--- ${t#test_}.$c failed (rc=$rc), its last lines:"; grep -v "^  .*worst err/tol=0\.0" "$RES/test_one.tmp" | tail -25; }
        case $rc in
          0) pass=$((pass + 1)); echo "    -> PASS" >> "$RES/tests.log" ;;
          77) skip=$((skip + 1)); echo "    -> SKIP" >> "$RES/tests.log" ;;
          *) fail=$((fail + 1)); failed_names+=" ${t#test_}.$c(rc=$rc)"; echo "    -> FAIL rc=$rc" >> "$RES/tests.log" ;;
        esac
        log "  ${t#test_}.$c rc=$rc"
      done
    done
    set_status TESTS "$pass passed, $fail failed, $skip skipped${failed_names:+ - failed:$failed_names}"
  fi
  log "tests: $(get_status TESTS)"
fi

# ---- demo training on cuda vs cpu -------------------------------------------------------------------------
# The bundled slide tiled as tools/demo.sh does, then 50 iterations of configs/demo.yaml from scratch on
# backend cuda and on backend cpu (same seed, data order and drop-path draws): images/s of the CUDA run
# (mean over iterations 11-50, after warm-up) and whether the loss curves track (bf16 GEMMs on the GPU,
# fp32 on the CPU: they drift apart slowly, so "tracks" means within 5% at every one of the first 10
# iterations and within 15% at the last).
demo_losses() { # metrics.jsonl -> "n last mean_img_s" ; and the loss column in $2
  python3 - "$1" "$2" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
open(sys.argv[2], "w").write("\n".join(repr(r["loss"]) for r in rows) + "\n")
ips = [r["images_per_s"] for r in rows[10:]] or [r["images_per_s"] for r in rows]
print(len(rows), rows[-1]["loss"] if rows else "nan", sum(ips) / max(len(ips), 1))
PY
}
if has_stage train; then
  log "stage train (demo slide: 50 iterations on cuda, then on cpu)"
  D=$RES/demo
  : > "$RES/train.log"
  if [ "$BIN" != build ] || [ ! -x build/dinotrain ] || [ ! -x build/dinotile ]; then
    set_status TRAIN "not run (needs the full CMake build: dinotile, dinotrain)"
  else
    rm -rf "$D/run_cuda" "$D/run_cpu"; mkdir -p "$D"
    {
      echo "=== tiling data/demo/CMU-1-Small-Region.svs"
      [ -d "$D/tiles" ] || build/dinotile -o "$D/tiles" --tile-size 224 --mpp 0.5 --min-tissue 0.3 data/demo/CMU-1-Small-Region.svs
      for be in cuda cpu; do
        echo "=== dinotrain --no-resume --iterations 50 configs/demo.yaml backend=$be"
        # options before the config: dinotrain's command line is [options] CONFIG [key=value ...]
        timeout 400 build/dinotrain --no-resume --iterations 50 configs/demo.yaml backend=$be \
          "train.output_dir=$D/run_$be" "data.sources=[$D/tiles]" "checkpoint.every_n_iterations=0"
        echo "rc=$?"
      done
    } >> "$RES/train.log" 2>&1
    tail -8 "$RES/train.log"
    g=$(demo_losses "$D/run_cuda/training_metrics.jsonl" "$D/loss_cuda.txt" 2>>"$RES/train.log")
    c=$(demo_losses "$D/run_cpu/training_metrics.jsonl" "$D/loss_cpu.txt" 2>>"$RES/train.log")
    read -r gn glast gips <<< "${g:-0 nan 0}"; read -r cn clast cips <<< "${c:-0 nan 0}"
    if [ "$gn" != 50 ] || [ "$cn" != 50 ]; then
      set_status TRAIN "FAILED: iterations logged cuda $gn, cpu $cn (see train.log)"
    else
      track=$(paste "$D/loss_cuda.txt" "$D/loss_cpu.txt" | awk '
        { r = ($2 != 0) ? ($1 - $2) / $2 : 1; if (r < 0) r = -r; if (NR <= 10 && r > m10) m10 = r; last = r }
        END { ok = (m10 <= 0.05 && last <= 0.15) ? "tracks" : "DIVERGES";
              printf "%s (max rel. diff %.3g over iterations 1-10, %.3g at 50)", ok, m10, last }')
      {
        echo "=== loss curves (iteration cuda cpu)"; paste "$D/loss_cuda.txt" "$D/loss_cpu.txt" | awk '{print NR, $1, $2}'
        echo "images/s cuda $gips cpu $cips"; echo "last loss cuda $glast cpu $clast"; echo "$track"
      } >> "$RES/train.log"
      echo "last loss: cuda $glast, cpu $clast; $track"
      set_status TRAIN "cuda $(printf '%.1f' "$gips") img/s vs cpu $(printf '%.1f' "$cips") img/s; last loss cuda $glast / cpu $clast: $track"
    fi
  fi
  log "train: $(get_status TRAIN)"
fi

# ---- memcheck of the smaller GPU cases (optional stage: --stages sanitize) ------------------------------
if has_stage sanitize; then
  log "stage sanitize (compute-sanitizer memcheck on the smaller cuda_ops cases)"
  SAN=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
  if [ -z "$BIN" ] || [ -z "$SAN" ]; then
    set_status SANITIZE "not run (no build or no compute-sanitizer)"
  else
    ( cd "$BIN" && DINO_SOURCE_DIR=$ROOT timeout 500 "$SAN" --tool memcheck --error-exitcode 99 ./test_cuda_ops \
        memory_alloc_zero_copy_roundtrip gemm_transposes_and_leading_dims layernorm_fwd_bwd gelu_swiglu_fwd_bwd im2col_tokens_fwd_bwd \
        rows_and_residual_fwd_bwd axpy_scale_sum_squares attention_fp32_gemms vit_swiglu_plain_bf16 koleo_kde_fwd_bwd \
        ssl_step_softmax_koleo_bf16 ssl_step_sinkhorn_kde_bf16 linear_lt_epilogue_matches_plain_path attention_bf16_gemms ) > "$RES/sanitize.log" 2>&1
    rc=$?
    grep -E "ERROR SUMMARY|Invalid|FAILED|^ok" "$RES/sanitize.log" | head -30
    set_status SANITIZE "$([ $rc = 0 ] && echo clean || echo "rc=$rc: $(grep -m1 'ERROR SUMMARY' "$RES/sanitize.log")")"
  fi
fi

# ---- C benchmark ----------------------------------------------------------------------------------------
if has_stage bench; then
  log "stage bench (C, CUDA backend)"
  : > "$RES/bench_c.log"
  if [ -z "$BIN" ] || [ ! -x "$BIN/bench_vit_gpu" ]; then
    set_status BENCH "not run (no build)"
  else
    nbad=0
    for spec in "vit_small:$C_BATCH_S" "vit_large:$C_BATCH_L"; do
      arch=${spec%%:*}
      for b in ${spec#*:}; do
        echo "=== bench_vit_gpu --arch $arch --batch $b" >> "$RES/bench_c.log"
        # one process per configuration: an out-of-memory batch ends only itself
        timeout 300 "$BIN/bench_vit_gpu" --backend cuda --arch "$arch" --batch "$b" > "$RES/bench_one.tmp" 2>&1
        rc=$?
        cat "$RES/bench_one.tmp" >> "$RES/bench_c.log"; copy_out # a call killed at its limit keeps this
        if [ $rc != 0 ]; then
          nbad=$((nbad + 1))
          why="rc=$rc"; grep -q "cannot allocate" "$RES/bench_one.tmp" && why="oom"
          echo "RESULT impl=c backend=cuda arch=$arch batch=$b status=failed($why)" >> "$RES/bench_c.log"
        fi
        grep "RESULT impl=c.*arch=$arch batch=$b " "$RES/bench_c.log" | tail -1
      done
    done
    # the cuBLASLt bias epilogue's effect: ViT-S at one batch with it switched off (DINO_CUDA_LT=0)
    echo "=== bench_vit_gpu --arch vit_small --batch $TC_BATCH_S, DINO_CUDA_LT=0" >> "$RES/bench_c.log"
    DINO_CUDA_LT=0 timeout 200 "$BIN/bench_vit_gpu" --backend cuda --arch vit_small --batch "$TC_BATCH_S" --no-peak 2>&1 |
      sed 's/^RESULT impl=c /RESULT impl=c-nolt /' >> "$RES/bench_c.log"
    # where the time goes: one per-op profile per model (synchronised after every op)
    for spec in "vit_small:$TC_BATCH_S" "vit_large:$TC_BATCH_L"; do
      arch=${spec%%:*}; b=${spec#*:}
      echo "=== op profile $arch batch $b" >> "$RES/bench_c.log"
      timeout 200 "$BIN/bench_vit_gpu" --backend cuda --arch "$arch" --batch "$b" --no-peak --warmup 1 --iters 2 \
        --op-profile 2>&1 | sed "s/^OPPROF /OPPROF $arch /" >> "$RES/bench_c.log"
    done
    set_status BENCH "ran ($nbad configurations failed)"
  fi
fi

# ---- PyTorch baseline -----------------------------------------------------------------------------------
# torch_runs SCRIPT LOG IMPL ARCH "EAGER BATCHES" COMPILE_BATCH: eager PyTorch at each batch, torch.compile
# at one (it recompiles per shape), appended to LOG; a failed run leaves a RESULT line with its status
torch_runs() {
  PYTHONUNBUFFERED=1 timeout 300 python3 "$1" --arch "$4" --batch $5 --modes eager ${PEAK:+--peak-tflops $PEAK} \
    >> "$2" 2>&1 || echo "RESULT impl=$3-eager arch=$4 status=failed(rc=$?)" >> "$2"
  copy_out
  PYTHONUNBUFFERED=1 timeout 300 python3 "$1" --arch "$4" --batch $6 --modes compile ${PEAK:+--peak-tflops $PEAK} \
    >> "$2" 2>&1 || echo "RESULT impl=$3-compile arch=$4 status=failed(rc=$?)" >> "$2"
  copy_out
}
if has_stage torch; then
  log "stage torch"
  : > "$RES/bench_torch.log"
  if ! python3 -c 'import torch; assert torch.cuda.is_available()' >/dev/null 2>&1; then
    set_status TORCH_BENCH "not run: python3 has no torch with CUDA"
  else
    PEAK=$(grep -h "^PEAK" "$RES/bench_c.log" 2>/dev/null | head -1 | sed 's/.*measured_bf16_tflops=\([0-9.]*\).*/\1/')
    for spec in "vit_small:$C_BATCH_S:$TC_BATCH_S" "vit_large:$C_BATCH_L:$TC_BATCH_L"; do
      IFS=: read -r arch eb cb <<< "$spec"
      torch_runs tests/torch_ref/bench_vit_gpu_torch.py "$RES/bench_torch.log" torch "$arch" "$eb" "$cb"
    done
    grep "^RESULT" "$RES/bench_torch.log"
    set_status TORCH_BENCH "ran ($(grep -c '^RESULT.*status=ok' "$RES/bench_torch.log") ok, $(grep '^RESULT' "$RES/bench_torch.log" | grep -vc 'status=ok') not ok)"
  fi
fi

# ---- the whole training step: C (bench_step) and PyTorch (bench_step_torch.py) ---------------------------
if has_stage step; then
  log "stage step (whole SSL step, C and PyTorch)"
  : > "$RES/bench_step.log"
  if [ -z "$BIN" ] || [ ! -x "$BIN/bench_step" ]; then
    set_status STEP "not run (no build)"
  else
    PEAK=$(grep -h "^PEAK" "$RES/bench_c.log" 2>/dev/null | head -1 | sed 's/.*measured_bf16_tflops=\([0-9.]*\).*/\1/')
    nbad=0
    for spec in "vit_small:$STEP_S" "vit_large:$STEP_L"; do
      arch=${spec%%:*}
      for b in ${spec#*:}; do
        rec=""; case "$b" in *r) rec=--recompute; b=${b%r} ;; esac
        echo "=== bench_step --arch $arch --batch $b $rec" >> "$RES/bench_step.log"
        timeout 300 "$BIN/bench_step" --backend cuda --arch "$arch" --batch "$b" $rec ${PEAK:+--no-peak} \
          > "$RES/step_one.tmp" 2>&1
        rc=$?
        [ -n "$PEAK" ] && sed -i "s/peak_tflops=-1.0 mfu=-1.0000/peak_tflops=$PEAK mfu=MFU/" "$RES/step_one.tmp"
        cat "$RES/step_one.tmp" >> "$RES/bench_step.log"; copy_out
        if [ $rc != 0 ]; then
          nbad=$((nbad + 1))
          echo "RESULT impl=c-step backend=cuda arch=$arch batch=$b recompute=$([ -n "$rec" ] && echo 1 || echo 0) status=failed(rc=$rc)" >> "$RES/bench_step.log"
        fi
      done
    done
    # MFU of the C lines against the measured peak of the bench stage (bench_step measured none with --no-peak)
    if [ -n "$PEAK" ]; then
      awk -v p="$PEAK" '/^RESULT impl=c-step/ && /mfu=MFU/ { for (i = 1; i <= NF; i++) if ($i ~ /^model_tflops=/) {
        split($i, a, "="); m = a[2] / p } sub(/mfu=MFU/, sprintf("mfu=%.4f", m)) } { print }' "$RES/bench_step.log" \
        > "$RES/step.tmp" && mv "$RES/step.tmp" "$RES/bench_step.log"
    fi
    if python3 -c 'import torch; assert torch.cuda.is_available()' >/dev/null 2>&1; then
      for spec in "vit_small:$STEP_S:${TC_BATCH_S}" "vit_large:$STEP_L:${TC_BATCH_L}"; do
        IFS=: read -r arch eb cb <<< "$spec"
        eb=$(echo "$eb" | tr -d r | tr ' ' '\n' | sort -un | tr '\n' ' ') # 32 and 32r: one PyTorch run
        torch_runs tests/torch_ref/bench_step_torch.py "$RES/bench_step.log" torch-step "$arch" "$eb" "$cb"
      done
    else
      echo "python3 has no torch with CUDA: PyTorch step not run" >> "$RES/bench_step.log"
    fi
    grep "^RESULT" "$RES/bench_step.log"
    set_status STEP "ran ($nbad C configurations failed; $(grep -c '^RESULT impl=torch.*status=ok' "$RES/bench_step.log") PyTorch ok)"
  fi
fi

# ---- summary --------------------------------------------------------------------------------------------
field() { # field KEY LINE
  echo "$2" | tr ' ' '\n' | sed -n "s/^$1=//p" | head -1
}
result_line() { # impl arch batch [pattern] -> last matching RESULT line
  cat "$RES"/bench_c.log "$RES"/bench_torch.log "$RES"/bench_step.log 2>/dev/null | grep "^RESULT impl=$1 " |
    grep " arch=$2 batch=$3 " | grep -e "${4:-.}" | tail -1
}
# cells C_LINE EAGER_LINE COMPILE_LINE: sets CI MFU EI KI RATIO for a table row (img/s, or the status in
# parentheses where a run failed; RATIO = C over the better PyTorch mode)
cells() {
  CI=$(field img_per_s "$1"); EI=$(field img_per_s "$2"); KI=$(field img_per_s "$3")
  local cm best; cm=$(field mfu "$1")
  [ -n "$1" ] && [ -z "$CI" ] && CI="($(field status "$1"))"
  [ -n "$2" ] && [ -z "$EI" ] && EI="($(field status "$2"))"
  [ -n "$3" ] && [ -z "$KI" ] && KI="($(field status "$3"))"
  best=$(printf '%s\n%s\n' "$EI" "$KI" | grep -E '^[0-9.]+$' | sort -g | tail -1)
  RATIO=""
  if [[ "$CI" =~ ^[0-9.]+$ ]] && [ -n "$best" ]; then RATIO=$(awk "BEGIN{printf \"%.2f\", $CI/$best}"); fi
  MFU=""; [[ "$cm" =~ ^[0-9.]+$ ]] && MFU=$(awk "BEGIN{printf \"%.1f%%\", 100*$cm}")
}
if has_stage summary; then
  S=$RES/summary.md
  {
    echo "## GPU check $(date -u +%Y-%m-%d) on $(get_status GPU)"
    echo
    echo "| stage | result |"
    echo "| --- | --- |"
    echo "| build | $(get_status BUILD) |"
    echo "| GPU tests | $(get_status TESTS) |"
    echo "| memcheck | $(get_status SANITIZE) |"
    echo "| demo training, 50 it (cuda vs cpu) | $(get_status TRAIN) |"
    echo "| C benchmark | $(get_status BENCH) |"
    echo "| PyTorch | $(get_status TORCH) |"
    echo "| PyTorch benchmark | $(get_status TORCH_BENCH) |"
    echo "| whole training step, C and PyTorch | $(get_status STEP) |"
    echo
    echo "ViT forward+backward, per image 2 x 224 px + 8 x 98 px crops, no head/teacher/drop-path; MFU against"
    echo "the measured dense bf16 cublasGemmEx rate ($(grep -h '^PEAK' "$RES/bench_c.log" 2>/dev/null | head -1 | sed 's/.*measured_bf16_tflops=\([0-9.]*\).*/\1/') TFLOP/s)."
    echo
    echo "| model | batch | C img/s | C MFU | torch eager img/s | torch compile img/s | C / best torch |"
    echo "| --- | --- | --- | --- | --- | --- | --- |"
    for spec in "vit_small:$C_BATCH_S" "vit_large:$C_BATCH_L"; do
      arch=${spec%%:*}
      for b in ${spec#*:}; do
        cells "$(result_line c "$arch" "$b")" "$(result_line torch-eager "$arch" "$b")" "$(result_line torch-compile "$arch" "$b")"
        echo "| $arch | $b | ${CI:--} | ${MFU:--} | ${EI:--} | ${KI:--} | ${RATIO:--} |"
      done
    done
    if grep -q "^RESULT impl=c-step" "$RES/bench_step.log" 2>/dev/null; then
      echo
      echo "The whole training step (teacher, student, shared head K = 65536, DINO/iBOT/KoLeo losses, backward,"
      echo "clipping, AdamW, EMA; next batch staged), per image 2 x 224 px + 8 x 98 px; r = recomputed activations."
      echo
      echo "| model | batch | C img/s | C MFU | C teacher / student fwd / backward / update ms | C GiB planned / taken | torch eager img/s | torch compile img/s | torch GiB | C / best torch |"
      echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
      for spec in "vit_small:$STEP_S" "vit_large:$STEP_L"; do
        arch=${spec%%:*}
        for b in ${spec#*:}; do
          bb=${b%r}; rec=0; [ "$bb" != "$b" ] && rec=1
          c=$(result_line c-step "$arch" "$bb" " recompute=$rec "); e=$(result_line torch-step-eager "$arch" "$bb")
          cells "$c" "$e" "$(result_line torch-step-compile "$arch" "$bb")"
          split="$(field teacher_ms "$c") / $(field student_fwd_ms "$c") / $(field bwd_ms "$c") / $(field update_ms "$c")"
          echo "| $arch | $b | ${CI:--} | ${MFU:--} | $split | $(field plan_gib "$c") / $(field model_gib "$c") | ${EI:--} | ${KI:--} | $(field max_mem_gib "$e") | ${RATIO:--} |"
        done
      done
    fi
    nolt=$(result_line c-nolt vit_small "$TC_BATCH_S"); withlt=$(result_line c vit_small "$TC_BATCH_S")
    if [ -n "$nolt" ]; then
      echo
      echo "cuBLASLt bias epilogue (ViT-S, batch $TC_BATCH_S): $(field img_per_s "$withlt") img/s with it, $(field img_per_s "$nolt") without (DINO_CUDA_LT=0)."
    fi
    for arch in vit_small vit_large; do
      if grep -q "^OPPROF $arch " "$RES/bench_c.log" 2>/dev/null; then
        echo; echo "Where the C step's time goes, $arch (per-op, synchronised; top 15):"; echo; echo '```'
        grep "^OPPROF $arch " "$RES/bench_c.log" | head -15 | sed "s/^OPPROF $arch //"
        echo '```'
      fi
    done
  } > "$S"
  echo; cat "$S"
fi
copy_out
exit 0
