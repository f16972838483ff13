#!/usr/bin/env bash
# make demo: clickstream in, personalized copy out, end to end, on a real Kafka
# broker and Redis started for the occasion and stopped afterwards.
#
#   scripts/demo.sh [BUILD]      (BUILD defaults to build)
#
# DEMO_EVENTS and DEMO_USERS size the synthetic clickstream.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
openblas_env
BUILD=${1:-build}
BIN=$BUILD/copystream
EVENTS=${DEMO_EVENTS:-20000}
USERS=${DEMO_USERS:-500}
DIR=run/demo
SERVICE_PID=

cleanup() {
    if [ -n "$SERVICE_PID" ] && kill -0 "$SERVICE_PID" 2>/dev/null; then
        kill -TERM "$SERVICE_PID" 2>/dev/null || true
        wait "$SERVICE_PID" 2>/dev/null || true
    fi
    scripts/services.sh stop --dir "$DIR" >/dev/null 2>&1 || true
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

start=$(date +%s.%N)
step "starting a Kafka broker (KRaft, single node) and Redis on free loopback ports"
scripts/services.sh start --dir "$DIR"
use_services "$DIR"
echo "kafka $KAFKA_BOOTSTRAP, redis $REDIS_HOST:$REDIS_PORT, logs in $DIR"

step "creating topics and loading the sample catalog (zh-CN and en-US)"
"$BIN" topics
"$BIN" loadgen --catalog --quiet

step "running the service and publishing $EVENTS clickstream events from $USERS users"
COPYSTREAM_LOG_LEVEL=info "$BIN" run --exit-when-idle 4000 >"$DIR/service.log" 2>&1 &
SERVICE_PID=$!
"$BIN" loadgen --count "$EVENTS" --users "$USERS" --quiet
echo "waiting for the service to work through the stream..."
wait "$SERVICE_PID"
SERVICE_PID=

step "a sample of the copies on the copy topic"
"$BIN" tail --per-locale 3
summary=$("$BIN" tail --summary --limit 0)

totals=$(grep -o 'totals: .*' "$DIR/service.log" | tail -n 1)
field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" <<<"$totals"; }
elapsed=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
step "summary"
echo "copy topic: $summary"
printf 'events in %s, copies out %s, dead-lettered %s, elapsed %.1f s\n' \
    "$(field events)" "$(field copies)" "$(field dead_lettered)" "$elapsed"
