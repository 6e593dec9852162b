#!/usr/bin/env bash
# Negative-sampling study (issue 5): the triplet loss with each of its eleven sampling strategies,
# next to InfoNCE, over seeds, on a synthetic benchmark.
#
#   scripts/triplet_study.sh DATA_DIR OUT_DIR [SEEDS="0 1 2"] [EPOCHS=6] [MARGIN=0.2]
#
# DATA_DIR holds `clarion synth` output (train/val/test.csv). Each run trains with the demo recipe
# (configs/demo.yaml) for EPOCHS epochs and is evaluated on test.csv (test.json). Finished runs
# are skipped, so the script can be re-run to continue.
# STRATEGIES="hard semihard" restricts the strategies (e.g. to split the work between two processes).
# Summarise with: python scripts/triplet_study_summary.py OUT_DIR
set -u
DATA=${1:?DATA_DIR}; OUT=${2:?OUT_DIR}; SEEDS=${3:-0 1 2}; EPOCHS=${4:-6}; MARGIN=${5:-0.2}
BIN=${BIN:-.venv/bin}
STRATEGIES=${STRATEGIES:-random full hard semihard easy_text hard_text easy_audio hard_audio semihard_band hardest sum}
for seed in $SEEDS; do
  for name in ${INFONCE-infonce} $STRATEGIES; do
    run=$OUT/s$seed/$name
    [ -f "$run/test.json" ] && continue
    rm -rf "$run"; mkdir -p "$(dirname "$run")"
    if [ "$name" = infonce ]; then set -- --objective infonce; else set -- --objective triplet sampling="$name" margin="$MARGIN"; fi
    $BIN/clarion train -q --config configs/demo.yaml --train "$DATA/train.csv" --val "$DATA/val.csv" \
        --out "$run" --cache-dir "$OUT/cache" train.epochs="$EPOCHS" train.seed="$seed" "$@" \
        > "$run.log" 2>&1 || { echo "FAILED $run (see $run.log)"; continue; }
    $BIN/clarion evaluate "$run" --data "$DATA/test.csv" --json "$run/test.json" -q > /dev/null
    echo "done $run $(date +%T)"
  done
done
