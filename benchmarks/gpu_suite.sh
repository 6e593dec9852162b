#!/usr/bin/env bash
# Every GPU figure of clarion in one call: CUDA tests, large-batch losses (dense / tiled / fused),
# objective overhead, OT solver, training throughput (default and CLAP-sized model).
#
#   benchmarks/gpu_suite.sh [--cpu-smoke] [PART ...]     PART: tests large_batch train overhead ot (default: all)
#
# On a CUDA machine with torch and triton installed (clarion itself is used from src/ through
# PYTHONPATH, not installed). clarion's other dependencies missing there are installed from
# wheels in .whl/ when that folder exists (pip install --no-index --no-deps --target). To make
# that folder, on a machine with pip access, in the repository root (Python 3.12, x86-64):
#
#   echo /.whl/ >> .git/info/exclude     # already in .gitignore
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
#     soundfile soxr cffi pycparser starlette uvicorn python-multipart pot
#
# (keep one version of each; the device image already holds numpy, scipy, pyyaml, tokenizers,
# safetensors, tqdm, matplotlib, httpx, hypothesis, pytest, transformers).
#
# Parts run in priority order under one wall-clock budget (SUITE_BUDGET seconds, default 540, so
# a 600 s call ends with its results), each also under its own cap; a part cut short is recorded
# as such. Each large-batch configuration runs in its own subprocess with a time cap, so an
# out-of-memory case is a row ("oom": true), not the end of the sweep. Results: JSON files
# benchmarks/results/<part>_<device>.json and gpu_suite_<device>.json (what ran, how long, exit
# codes), logs in benchmarks/results/logs_<device>/; with $OUT set (the device tool) everything
# is also packed into $OUT/gpu_suite_results.tar.gz and the summary copied to $OUT.
#
# --cpu-smoke: the same parts at tiny sizes on the CPU (kernels under TRITON_INTERPRET=1),
# results under ${SMOKE_DIR:-/tmp/clarion_gpu_suite_smoke}: to check the script before GPU time is spent.

set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SMOKE=0
PARTS=()
for arg in "$@"; do
  case $arg in
    --cpu-smoke) SMOKE=1 ;;
    tests|large_batch|train|overhead|ot) PARTS+=("$arg") ;;
    -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
    *) echo "gpu_suite: unknown argument $arg" >&2; exit 2 ;;
  esac
done
[ ${#PARTS[@]} -eq 0 ] && PARTS=(tests large_batch train overhead ot)
PY=${PYTHON:-python3}
BUDGET=${SUITE_BUDGET:-540}
START=$(date +%s)

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/clarion_site .whl/*.whl \
    || { echo "gpu_suite: installing .whl/ failed" >&2; exit 1; }
  export PYTHONPATH=/tmp/clarion_site:$ROOT/src${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1

if [ $SMOKE -eq 1 ]; then
  export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""
  RESULTS=${SMOKE_DIR:-/tmp/clarion_gpu_suite_smoke}
  DEVICE=cpu
else
  RESULTS=$ROOT/benchmarks/results
  DEVICE=cuda
  $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "gpu_suite: no CUDA device (use --cpu-smoke on a CPU)" >&2; exit 1; }
fi
NAME=$($PY -c "import torch; print(torch.cuda.get_device_name() if '$DEVICE' == 'cuda' else 'cpu-smoke')")
SLUG=$(echo "$NAME" | tr 'A-Z' 'a-z' | tr -cs 'a-z0-9' '-' | sed 's/^-//; s/-$//')
LOGS=$RESULTS/logs_$SLUG
mkdir -p "$RESULTS" "$LOGS"
SUMMARY=$RESULTS/gpu_suite_$SLUG.json
RECORDS=$LOGS/records.jsonl
: > "$RECORDS"
$PY -c "import torch; print(torch.__version__)" > "$LOGS/versions.txt"
$PY -c "import triton; print('triton', triton.__version__)" >> "$LOGS/versions.txt" 2>&1
nvidia-smi > "$LOGS/nvidia-smi.txt" 2>&1

# step NAME CAP OUTFILE CMD...: run CMD with stdout to OUTFILE (when not -) under min(CAP, budget left)
step() {
  local name=$1 cap=$2 out=$3; shift 3
  local left=$((BUDGET - ($(date +%s) - START)))
  local limit=$(( cap < left ? cap : left ))
  if [ $limit -le 5 ]; then
    echo "{\"step\": \"$name\", \"status\": \"skipped: suite budget spent\"}" >> "$RECORDS"; return
  fi
  echo "== $name (cap ${limit}s)" >&2
  local t0=$(date +%s) rc
  if [ "$out" = - ]; then
    timeout -k 10 "$limit" "$@" > "$LOGS/$name.out" 2> "$LOGS/$name.err"; rc=$?
  else
    timeout -k 10 "$limit" "$@" > "$out" 2> "$LOGS/$name.err"; rc=$?
  fi
  local status=ok
  [ $rc -ne 0 ] && status="exit $rc"
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && status="cut at ${limit}s"
  echo "{\"step\": \"$name\", \"status\": \"$status\", \"seconds\": $(( $(date +%s) - t0 )), \"output\": \"${out#$ROOT/}\"}" >> "$RECORDS"
  echo "   $name: $status" >&2
}

part_tests() {
  if [ $SMOKE -eq 1 ]; then
    step tests 240 - $PY -m pytest -q -m cuda -rs -p no:cacheprovider tests/test_fused.py
  else  # every test marked `cuda`: the fused kernels natively, the OT solvers and search on the GPU
    step tests 100 - $PY -m pytest -q -m cuda -rs -p no:cacheprovider
  fi
}

part_large_batch() {
  local lb="$PY benchmarks/large_batch.py --device $DEVICE"
  if [ $SMOKE -eq 1 ]; then
    step large_batch 150 "$RESULTS/large_batch_$SLUG.json" $lb --batches 64 100 --dim 32 --repeats 1 --timeout 60
    return
  fi
  # B ≤ 64k: three repeats, every method, both dtypes; then the large batches, once each:
  # bf16 up to 1M (dense runs out of memory past ~128k, which the row records), fp32 to 256k
  step large_batch 150 "$RESULTS/large_batch_$SLUG.json" $lb --batches 4096 16384 65536 --repeats 3 --timeout 60
  step large_batch_bf16_large 110 "$RESULTS/large_batch_bf16_large_$SLUG.json" \
    $lb --batches 262144 1048576 --dtypes bf16 --methods dense tiled fused --repeats 1 --timeout 75
  step large_batch_fp32_large 50 "$RESULTS/large_batch_fp32_large_$SLUG.json" \
    $lb --batches 262144 --dtypes fp32 --methods tiled fused --repeats 1 --timeout 40
}

# the CLAP-sized model from existing options: PANNs CNN14 (random init, 10 s at 32 kHz; clarion has
# no HTSAT) and a RoBERTa-base-shaped text transformer (12 layers, width 768, 12 heads; the vocabulary
# is the synthetic captions' own, not RoBERTa's 50k), 512-d embeddings, bf16 autocast (train.amp)
CLAP=(model.audio_encoder=panns-cnn14 model.text_width=768 model.text_layers=12 model.text_heads=12
      model.embed_dim=512 audio.clip_seconds=10.0 train.amp=true)
CLAP_SMOKE=(model.audio_encoder=panns-cnn14 model.panns_width=4 model.text_width=32 model.text_layers=2
            model.text_heads=2 model.embed_dim=16 audio.clip_seconds=1.0 train.amp=true)

part_train() {
  local tt="$PY benchmarks/train_throughput.py --device $DEVICE"
  if [ $SMOKE -eq 1 ]; then
    step train_default 180 "$RESULTS/train_throughput_default_$SLUG.json" $tt --clips 16 --batch-size 8 --workers 0 \
      audio.clip_seconds=1.0 model.audio_channels=[8,16] model.text_width=32 model.text_layers=1 model.text_heads=2 model.embed_dim=16
    step train_clap 180 "$RESULTS/train_throughput_clap_$SLUG.json" $tt --clips 8 --batch-size 4 --workers 0 "${CLAP_SMOKE[@]}"
    return
  fi
  step train_default 60 "$RESULTS/train_throughput_default_$SLUG.json" $tt --clips 512 --batch-size 64 --workers 8 train.amp=true
  step train_clap 90 "$RESULTS/train_throughput_clap_$SLUG.json" $tt --clips 256 --batch-size 32 --workers 8 "${CLAP[@]}"
}

part_overhead() {
  if [ $SMOKE -eq 1 ]; then
    step overhead 240 "$RESULTS/objective_overhead_$SLUG.json" $PY benchmarks/objective_overhead.py --device cpu --quick --step-batch 8
  else
    step overhead 60 "$RESULTS/objective_overhead_$SLUG.json" $PY benchmarks/objective_overhead.py --device cuda
  fi
}

part_ot() {
  if [ $SMOKE -eq 1 ]; then
    step ot 120 "$RESULTS/ot_solver_$SLUG.json" $PY benchmarks/ot_solver.py --device cpu --batches 32 --dim 16 --eps 0.05 --repeats 1 --budget 2
  else
    step ot 60 "$RESULTS/ot_solver_$SLUG.json" $PY benchmarks/ot_solver.py --device cuda --batches 128 1024 4096 --repeats 3 --budget 3
  fi
}

for part in "${PARTS[@]}"; do "part_$part"; done

$PY - "$SUMMARY" "$RECORDS" "$NAME" "$LOGS/versions.txt" "$((BUDGET))" <<'EOF'
import json, sys, time
summary, records, name, versions, budget = sys.argv[1:]
steps = [json.loads(line) for line in open(records) if line.strip()]
with open(summary, "w") as f:
    json.dump({"device": name, "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "versions": open(versions).read().split("\n")[:2],
               "budget_s": int(budget), "steps": steps}, f, indent=1)
    f.write("\n")
print(json.dumps(steps, indent=0))
EOF
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
  tar -czf "$OUT/gpu_suite_results.tar.gz" -C "$RESULTS" $(cd "$RESULTS" && ls -d *"$SLUG"*) 2>/dev/null
  cp "$SUMMARY" "$OUT/"
fi
echo "gpu_suite: $(( $(date +%s) - START ))s; summary $SUMMARY" >&2
grep -h '"status": "exit\|"status": "cut' "$RECORDS" >&2 && exit 1
exit 0
