#!/usr/bin/env bash
# The README's resumable-index figure: build an index of AUDIO with RUN's model, kill -9 the build
# as soon as its 4th committed chunk appears (4 x 256 files), rerun it, and compare the result with
# an uninterrupted build (byte for byte). Prints one JSON object.
#   benchmarks/index_resume.sh RUN AUDIO_DIR OUT_DIR   (e.g. a make-demo run, demo/data/audio)
set -u
RUN=$1; AUDIO=$2; OUT=$3
CLARION=${CLARION:-.venv/bin/clarion}
rm -rf "$OUT"; mkdir -p "$OUT"
files=$(find "$AUDIO" -name '*.wav' | wc -l)
"$CLARION" index build "$AUDIO" --model "$RUN" --out "$OUT/idx" -q > "$OUT/first.log" 2>&1 &
pid=$!
while [ ! -f "$OUT/idx/partial/chunk-00003.json" ]; do
  kill -0 $pid 2>/dev/null || { echo "the build finished before the kill" >&2; exit 1; }
  sleep 0.05
done
kill -9 $pid; wait $pid 2>/dev/null
chunks=$(ls "$OUT"/idx/partial/chunk-*.json | wc -l)
resumed=$("$CLARION" index build "$AUDIO" --model "$RUN" --out "$OUT/idx" -q 2>&1 | tail -1)
"$CLARION" index build "$AUDIO" --model "$RUN" --out "$OUT/ref" -q > "$OUT/ref.log" 2>&1
identical=false
cmp -s "$OUT/idx/embeddings.npy" "$OUT/ref/embeddings.npy" && cmp -s "$OUT/idx/entries.csv" "$OUT/ref/entries.csv" && identical=true
now=$(echo "$resumed" | sed -n 's/.* \([0-9]*\) embedded now.*/\1/p')
kept=$(echo "$resumed" | sed -n 's/.* \([0-9]*\) resumed from.*/\1/p')
printf '{"files": %s, "chunks_committed_at_kill": %s, "embedded_on_rerun": %s, "resumed": %s, "identical_to_uninterrupted": %s}\n' \
  "$files" "$chunks" "${now:-null}" "${kept:-null}" "$identical"
