#!/usr/bin/env bash
# Noisy-correspondence study (issue 4): InfoNCE vs m-LTM (euclidean, projected) vs m-LTM with
# partial OT, at caption-noise ratios 0 / 0.2 / 0.4, over seeds, on a synthetic benchmark.
#
#   scripts/noise_study.sh DATA_DIR OUT_DIR [SEEDS="0 1 2"] [EPOCHS=6]
#
# DATA_DIR holds `clarion synth` output (train/val/test.csv). Each run trains with the demo recipe
# (configs/demo.yaml) for EPOCHS epochs, then is evaluated on test.csv with cosine scoring
# (test.json) and with OT scoring (test_ot.json; m-LTM runs use their learned metric). Finished runs are skipped,
# so the script can be re-run to continue. Partial OT keeps mass s = 1 − p (0.95 at p = 0).
# Summarise with: python scripts/noise_study_summary.py OUT_DIR
set -u
DATA=${1:?DATA_DIR}; OUT=${2:?OUT_DIR}; SEEDS=${3:-0 1 2}; EPOCHS=${4:-6}
BIN=${BIN:-.venv/bin}
for seed in $SEEDS; do
  for p in 0 0.2 0.4; do
    mass=$(python3 -c "print(0.95 if $p == 0 else round(1 - $p, 2))")
    for spec in "infonce infonce" \
                "mltm mltm_euclidean objective.options.metric=euclidean" \
                "mltm mltm_projected objective.options.metric=projected" \
                "mltm mltm_partial objective.options.metric=euclidean objective.options.partial_mass=$mass"; do
      set -- $spec; objective=$1; name=$2; shift 2
      run=$OUT/p$p/s$seed/$name
      [ -f "$run/test.json" ] && continue
      rm -rf "$run"; mkdir -p "$(dirname "$run")"
      $BIN/clarion train -q --config configs/demo.yaml --train "$DATA/train.csv" --val "$DATA/val.csv" \
          --objective "$objective" --out "$run" --cache-dir "$OUT/cache" --noise-ratio "$p" \
          train.epochs="$EPOCHS" train.seed="$seed" "$@" > "$run.log" 2>&1 || { echo "FAILED $run (see $run.log)"; continue; }
      $BIN/clarion evaluate "$run" --data "$DATA/test.csv" --scoring ot --json "$run/test_ot.json" -q > /dev/null
      $BIN/clarion evaluate "$run" --data "$DATA/test.csv" --json "$run/test.json" -q > /dev/null
      echo "done $run $(date +%T)"
    done
  done
done
