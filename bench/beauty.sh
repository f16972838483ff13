#!/usr/bin/env bash
# Trains a model with `copystream train`'s defaults on Amazon Beauty (S3-Rec preprocessing), then
# scores the test split with `copystream eval` (full ranking, and 100 sampled negatives), and
# prints the wall time of each: the figures docs/MODEL.md records. TRAIN_ARGS adds train options.
#
#   bench/beauty.sh BUILD        (BEAUTY_DIR defaults to ../shared/data/amazon-beauty)
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"
build=$(realpath -m "${1:-build}")
data=${BEAUTY_DIR:-$ROOT/../shared/data/amazon-beauty}
[[ -f $data/sequences.txt && -f $data/item2attributes.json ]] ||
    die "no Amazon Beauty data in $data (set BEAUTY_DIR)"
openblas_env
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

start=$(date +%s.%N)
# shellcheck disable=SC2086  # TRAIN_ARGS is a list of options
"$build/copystream" train --sequences "$data/sequences.txt" --attributes "$data/item2attributes.json" \
    --out "$out/beauty.model" ${TRAIN_ARGS:-} | tee "$out/train.txt"
mid=$(date +%s.%N)
"$build/copystream" eval --model "$out/beauty.model" --sequences "$data/sequences.txt" | tee "$out/eval.txt"
end=$(date +%s.%N)
awk -v a="$start" -v b="$mid" -v c="$end" 'BEGIN { printf "train_wall_s %.1f\neval_wall_s %.1f\n", b - a, c - b }'
awk '/^full ranking/ {print "test_full_hr10", $8; print "test_full_ndcg10", $14}' "$out/eval.txt"
awk '/^best epoch/ {print "best_epoch", $3; print "best_epoch_reached_s", $6}' "$out/train.txt"
