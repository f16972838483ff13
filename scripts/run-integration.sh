#!/usr/bin/env bash
# Runs tests/integration with pytest against a fresh Kafka broker and Redis that services.sh starts
# in a new folder under run/ and always stops afterwards. Extra pytest arguments go in
# PYTEST_ARGS (e.g. PYTEST_ARGS='-k restart -vv'). On failure the services' logs are kept, and
# their tails printed; on success the folder is removed.
#
#   scripts/run-integration.sh BUILD
set -euo pipefail
. "$(dirname "$0")/lib.sh"
(($# == 1)) || die "usage: run-integration.sh BUILD"
cd "$ROOT"
build=$(realpath -m "$1")
[[ -x .venv/bin/python ]] || die "no .venv: run scripts/deps.sh (make deps) first"

mkdir -p run
dir=$(mktemp -d "$ROOT/run/it.XXXXXX")
ok=0
# The tails are printed before stopping, which would bury the interesting part under shutdown lines.
finish() {
    local log
    if ((!ok)); then
        for log in kafka.log redis.log; do
            [[ -s $dir/$log ]] || continue
            echo "---- last lines of $dir/$log" >&2
            tail -n 40 "$dir/$log" >&2
        done
        echo "integration: the services' configs, data and logs are kept in $dir" >&2
    fi
    scripts/services.sh stop --dir "$dir" || true
    ((ok)) && rm -rf "$dir"
}
trap finish EXIT

scripts/services.sh start --dir "$dir"
set -a
. "$dir/services.env"
set +a
export COPYSTREAM_BIN=$build/copystream PROJECT_ROOT=$ROOT

shopt -s nullglob
tests=(tests/integration/test_*.py tests/integration/*_test.py)
if ((${#tests[@]} == 0)); then
    echo "integration: no tests in tests/integration yet (Kafka and Redis started and stopped)"
else
    # Split like a shell would, so PYTEST_ARGS="-k 'a or b'" works; -r: nothing for an empty one.
    mapfile -d '' extra < <(xargs -r printf '%s\0' <<<"${PYTEST_ARGS:-}")
    .venv/bin/python -m pytest -x -q tests/integration "${extra[@]}"
fi
ok=1
