#!/usr/bin/env bash
# Runs every unit-test binary in BUILD/tests (test_*), one summary line each, and the totals as
# "unit: N passed, N failed" (cmocka test cases). A binary's own output is shown only when it
# fails, or always with VERBOSE=1. VALGRIND=1 runs each binary under valgrind, failing on any
# error or definite/indirect leak.
#
#   scripts/run-unit.sh BUILD
set -euo pipefail
. "$(dirname "$0")/lib.sh"
(($# == 1)) || die "usage: run-unit.sh BUILD"
build=$1
cd "$ROOT"

# Stacks for sanitizer reports in build-asan; a user's own settings win.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

runner=()
if [[ ${VALGRIND:-0} == 1 ]]; then
    # shellcheck disable=SC2054 # the commas belong to valgrind's option values
    runner=(valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect
        --show-leak-kinds=definite,indirect -q)
fi

bins=()
for f in "$build"/tests/test_*; do
    [[ -f $f && -x $f ]] && bins+=("$f")
done
((${#bins[@]})) || die "no test binaries in $build/tests (make $build/tests/... or make all first)"

# Sums cmocka's "[  PASSED  ] N test(s)." lines (one per group run) of the last binary's output.
count() {
    awk -v tag="$1" '$0 ~ "^\\[  " tag "  \\] [0-9]+ test" { n += $4 } END { print n + 0 }' "$out"
}

out=$(mktemp)
trap 'rm -f "$out"' EXIT
passed=0 failed=0 bad_bins=0
for bin in "${bins[@]}"; do
    name=$(basename "$bin")
    start=${EPOCHREALTIME/./}
    rc=0
    # A hung test must not eat CI's whole time budget.
    timeout "${UNIT_TIMEOUT:-600}" "${runner[@]}" "$bin" >"$out" 2>&1 || rc=$?
    ms=$(((${EPOCHREALTIME/./} - start) / 1000))
    secs=$((ms / 1000)).$(printf '%02d' $((ms % 1000 / 10)))
    ok=$(count PASSED)
    ko=$(count FAILED)
    passed=$((passed + ok))
    if ((rc == 0)); then
        echo "PASS  $name  ($ok tests, ${secs}s)"
        [[ ${VERBOSE:-0} == 1 ]] && cat "$out"
    else
        # A crash or a valgrind/sanitizer error may leave no cmocka count: count it as one.
        failed=$((failed + (ko > 0 ? ko : 1)))
        bad_bins=$((bad_bins + 1))
        cat "$out"
        case $rc in
            99) why="valgrind found errors" ;;
            124) why="timed out" ;;
            *) why="exit $rc" ;;
        esac
        echo "FAIL  $name  ($why, ${secs}s)"
    fi
done
echo "unit: $passed passed, $failed failed"
((bad_bins == 0))
