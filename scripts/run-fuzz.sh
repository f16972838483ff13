#!/usr/bin/env bash
# Runs every libFuzzer target in BUILD/fuzz (fuzz_<name>) for SECONDS each on its committed corpus,
# tests/fuzz/corpus/<name>, one after the other, and fails if any finds a crash, a leak, undefined
# behaviour or a broken property. libFuzzer first runs every committed input, so the corpus is also
# the regression suite of every bug fuzzing found. New inputs go to a scratch folder, not into the
# corpus; merge them in by hand (README.md, "Fuzzing"). A crashing input is saved as
# BUILD/fuzz-artifacts/<name>/crash-<sha1> (or leak-, timeout-, oom-), and printed.
#
#   scripts/run-fuzz.sh BUILD [SECONDS]      e.g. scripts/run-fuzz.sh build-fuzz 30
#
# Extra libFuzzer flags can be given in FUZZ_FLAGS (e.g. FUZZ_FLAGS=-jobs=2).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
(($# >= 1 && $# <= 2)) || die "usage: run-fuzz.sh BUILD [SECONDS]"
build=$1
seconds=${2:-30}
cd "$ROOT"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

bins=()
for f in "$build"/fuzz/fuzz_*; do
    [[ -f $f && -x $f ]] && bins+=("$f")
done
((${#bins[@]})) || die "no fuzz targets in $build/fuzz (make fuzz-build first)"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=0
for bin in "${bins[@]}"; do
    name=$(basename "$bin")
    name=${name#fuzz_}
    corpus=tests/fuzz/corpus/$name
    artifacts=$build/fuzz-artifacts/$name
    [[ -d $corpus ]] || die "no corpus $corpus for $bin"
    mkdir -p "$artifacts" "$scratch/$name"
    dict=()
    [[ -f tests/fuzz/$name.dict ]] && dict=(-dict="tests/fuzz/$name.dict")
    log=$scratch/$name.log
    rc=0
    # -timeout: one input taking seconds is a bug (a hang) too.
    # shellcheck disable=SC2086 # FUZZ_FLAGS is a list of flags
    "$bin" -max_total_time="$seconds" -max_len=16384 -timeout=10 -print_final_stats=1 \
        -artifact_prefix="$artifacts/" "${dict[@]}" ${FUZZ_FLAGS:-} \
        "$scratch/$name" "$corpus" >"$log" 2>&1 || rc=$?
    runs=$(awk '/stat::number_of_executed_units/ { print $NF }' "$log")
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
    if ((rc == 0)); then
        echo "PASS  fuzz_$name  (${runs:-?} inputs in ${seconds}s, ${cov:-cov: ?}, $(ls "$scratch/$name" | wc -l) new)"
    else
        failed=$((failed + 1))
        # The report from its first line (the stack of the finding), else the log's end.
        report=$(sed -n '/ERROR: \|runtime error\|property broken\|deadly signal/,$p' "$log")
        if [[ -n $report ]]; then head -n 80 <<<"$report"; else tail -n 40 "$log"; fi
        saved=$(grep -o "Test unit written to .*" "$log" | sed 's/Test unit written to //' || true)
        echo "FAIL  fuzz_$name  (exit $rc; input saved as ${saved:-?}; reproduce from $ROOT: $bin ${saved:-<input>})"
    fi
done
((failed == 0))
