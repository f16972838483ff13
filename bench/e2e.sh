#!/usr/bin/env bash
# make bench: copystream's end-to-end throughput against a passthrough ceiling,
# measured in the same run on the same broker and Redis.
#
#   bench/e2e.sh [BUILD]
#
# A synthetic clickstream (BENCH_EVENTS events from BENCH_USERS users) is
# published once; then, ROUNDS times, the passthrough (consume, produce the
# same message, commit after acks: bench/passthrough.c) and the service (same
# input, fresh consumer group and fresh Redis key prefix) each drain it, one
# right after the other; the service three times: with the affinity strategy
# only, with the learned strategy on (e2e_model_*), and with the affinity
# strategy exactly once (e2e_exactly_once_*: a Kafka transaction per batch). Both report events per second from their first poll
# to their last commit. The ratio is taken within each round, where both saw
# the same machine, and the median round is reported; the throughputs are
# the best round of each. Output: `name value` lines.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
openblas_env
BUILD=${1:-build}
BIN=$BUILD/copystream
EVENTS=${BENCH_EVENTS:-200000}
USERS=${BENCH_USERS:-20000}
ROUNDS=${BENCH_ROUNDS:-3}
DIR=run/bench

trap 'scripts/services.sh stop --dir "$DIR" >/dev/null 2>&1 || true' EXIT
scripts/services.sh start --dir "$DIR" >/dev/null
use_services "$DIR"

"$BIN" topics
COPYSTREAM_TOPIC_COPY=passthrough "$BIN" topics
"$BIN" loadgen --catalog --quiet
# The history ends two hours ago, so that every cart reminder it schedules
# (intent.cart_reminder.delay_s, an hour) is due when the service reads it:
# a round then measures the reminders' work, not the wall-clock wait for the
# last ones to come due after the input is drained.
end_ms=$(($(date +%s%3N) - 2 * 3600 * 1000))
gen=$("$BIN" loadgen --count "$EVENTS" --users "$USERS" --end-ms "$end_ms" --quiet)
echo "# input: $gen" >&2

# The learned strategy runs with a model of the default shape (d=64, 2
# layers, 2 heads, window 200) over the sample catalog; its weights are
# random until `copystream train` exists, which costs the same to run.
MODEL=$DIR/model.bin
"$BUILD/tools/mkmodel" "$MODEL" --sample-catalog --seed 1 --dim 64 --layers 2 --heads 2 \
    --window 200

rate() { sed -n 's/.*events_per_s=\([0-9.]*\).*/\1/p' | tail -n 1; }
max() { awk -v a="$1" -v b="$2" 'BEGIN { print (b > a) ? b : a }'; }
# Drains the input with the service: run ROUND NAME [VAR=VALUE...]
service() {
    redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" flushall >/dev/null
    env COPYSTREAM_LOG_LEVEL=info COPYSTREAM_REDIS_KEY__PREFIX="b$1$2" "${@:3}" \
        "$BIN" run --group "svc-$1-$2" --exit-when-idle 2000 2>&1
}
best_pt=0 best_e2e=0 best_model=0 best_eos=0 copies=0 ratios=() model_ratios=() eos_ratios=()
for round in $(seq 1 "$ROUNDS"); do
    pt=$(COPYSTREAM_TOPIC_COPY=passthrough "$BUILD/bench/passthrough" --group "pt-$round" \
         --exit-when-idle 2000 | rate)
    log=$(service "$round" affinity)
    e2e=$(rate <<<"$log")
    copies=$(sed -n 's/.*copies=\([0-9]*\).*/\1/p' <<<"$log" | tail -n 1)
    model=$(service "$round" model COPYSTREAM_MODEL_PATH="$MODEL" | rate)
    eos=$(service "$round" eos COPYSTREAM_PROCESSING_GUARANTEE=exactly_once | rate)
    eos_ratios+=("$(awk -v e="$eos" -v p="$pt" 'BEGIN { printf "%.3f", e / p }')")
    ratio=$(awk -v e="$e2e" -v p="$pt" 'BEGIN { printf "%.3f", e / p }')
    model_ratio=$(awk -v e="$model" -v p="$pt" 'BEGIN { printf "%.3f", e / p }')
    ratios+=("$ratio")
    model_ratios+=("$model_ratio")
    echo "# round $round: passthrough $pt/s, copystream $e2e/s (ratio $ratio)," \
         "with the model $model/s (ratio $model_ratio), exactly once $eos/s" >&2
    best_pt=$(max "$best_pt" "$pt")
    best_e2e=$(max "$best_e2e" "$e2e")
    best_model=$(max "$best_model" "$model")
    best_eos=$(max "$best_eos" "$eos")
done
median() { sort -n | awk '{ r[NR] = $1 } END { print r[int((NR + 1) / 2)] }'; }

echo "events $EVENTS"
echo "users $USERS"
echo "copies_per_round $copies"
echo "passthrough_events_per_s $best_pt"
echo "e2e_events_per_s $best_e2e"
echo "e2e_model_events_per_s $best_model"
printf '%s\n' "${ratios[@]}" | sort -n | awk '{ r[NR] = $1 } END {
    print "e2e_vs_passthrough", r[int((NR + 1) / 2)]
    print "e2e_vs_passthrough_min", r[1]
    print "e2e_vs_passthrough_max", r[NR] }'
echo "e2e_model_vs_passthrough $(printf '%s\n' "${model_ratios[@]}" | median)"
echo "e2e_exactly_once_events_per_s $best_eos"
echo "e2e_exactly_once_vs_passthrough $(printf '%s\n' "${eos_ratios[@]}" | median)"
