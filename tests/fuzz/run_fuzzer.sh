#!/bin/sh
# One bounded fuzzing run (the ctest cases fuzz.<name>; docs/fuzzing.md):
#   run_fuzzer.sh FUZZER SEEDS_DIR REGRESSIONS_DIR WORK_DIR SECONDS
# WORK_DIR is emptied, then FUZZER (a libFuzzer binary) runs for SECONDS on a fresh corpus in
# WORK_DIR/corpus, starting from the seeds and the committed regression inputs (both only read). Any finding
# (crash, sanitizer report, leak, an input running over 10 s, over 2 GB of memory) ends it with a non-zero
# status; the input is kept in WORK_DIR/artifacts/. Inputs that found new coverage stay in WORK_DIR/corpus.
set -eu
fuzzer=$1 seeds=$2 regressions=$3 work=$4 seconds=$5
rm -rf "$work"
mkdir -p "$work/corpus" "$work/artifacts"
dirs="$work/corpus $seeds"
if [ -d "$regressions" ]; then dirs="$dirs $regressions"; fi
status=0
# shellcheck disable=SC2086 # the corpus directories are words
"$fuzzer" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$work/artifacts/" $dirs > "$work/fuzz.log" 2>&1 || status=$?
if [ "$status" -ne 0 ] || ls "$work/artifacts/"* > /dev/null 2>&1; then
    tail -150 "$work/fuzz.log"
    echo "run_fuzzer: $(basename "$fuzzer") found a problem (status $status); the input: $(ls "$work/artifacts/" | head -5)"
    echo "run_fuzzer: reproduce with: $fuzzer $work/artifacts/<file>"
    exit 1
fi
grep -E "^(stat::|Done|INFO: Seed|#[0-9]+[[:space:]]+(INITED|DONE))" "$work/fuzz.log" | tail -12
echo "run_fuzzer: $(basename "$fuzzer"): no finding in $seconds s, corpus $(ls "$work/corpus" | wc -l) new inputs"
