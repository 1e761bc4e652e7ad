#!/usr/bin/env bash
# On a CUDA machine: the rate `dlrm train --device cuda` reaches against the bare step of
# `dlrm bench` on the same data and model, with each batch made between two steps
# (DLRM_PREFETCH=0) and made ahead on a thread (the default on CUDA, dlrm/data/prefetch.py).
#
#   bash benchmarks/gpu_train_input.sh [OUT]      (default OUT=bench-gpu/input; ROWS=2000000)
#
# Data: ROWS rows of Kaggle-format TSV from `dlrm synth`, preprocessed (80/10/10 split), and
# the planted synthetic source at the kaggle preset's full table sizes; three epochs of the
# folder, so that the first steps' warm-up (kernel loading, cuBLAS state) is a small part of
# the time. Model: the kaggle preset, bf16, SGD (the optimizer `dlrm bench` steps with).
# Writes one log per run and summary.md; called by benchmarks/gpu.sh.
set -uo pipefail
OUT=${1:-bench-gpu/input}
ROWS=${ROWS:-2000000}
DEVICE=${DEVICE:-cuda}  # DEVICE=cpu: a dry run of the plumbing
mkdir -p "$OUT"
source "$(dirname "$0")/python_env.sh"
DLRM="$PY -m dlrm"
DATA="$OUT/data"
rm -rf "$DATA"; mkdir -p "$DATA"
timeout 120 $DLRM synth --format criteo-tsv --rows "$ROWS" --out "$DATA/train.txt" --quiet \
  && timeout 120 $DLRM preprocess criteo-kaggle --input "$DATA/train.txt" --out "$DATA/folder" \
     --quiet > "$OUT/preprocess.txt" 2>&1 \
  || { echo "gpu_train_input: making the data set failed (see $OUT/preprocess.txt)"; exit 1; }
rm -f "$DATA/train.txt"

rate() { grep -oE 'training throughput [0-9,]+' "$1" | grep -oE '[0-9,]+$' || echo FAILED; }
eval_rate() { grep -oE 'validation [0-9,]+ samples/s' "$1" | grep -oE '[0-9,]+' || echo -; }
echo "| data | batch | bare step (dlrm bench) | train, batches between steps | train, batches ahead | eval, between | eval, ahead |" > "$OUT/summary.md"
echo "|---|---|---|---|---|---|---|" >> "$OUT/summary.md"
for batch in 16384 2048; do
  timeout 90 $DLRM bench --device "$DEVICE" --data "$DATA/folder" --preset kaggle --precision bf16 \
    --batch-size $batch --warmup 5 --trials 5 --steps 20 --no-ceilings --quiet \
    > "$OUT/bench-folder-$batch.txt" 2>&1
  bare=$(grep -oE 'end to end: [0-9,]+' "$OUT/bench-folder-$batch.txt" | grep -oE '[0-9,]+$' || echo FAILED)
  for depth in 0 2; do
    DLRM_PREFETCH=$depth timeout 120 $DLRM train --device "$DEVICE" --data "$DATA/folder" \
      --preset kaggle --precision bf16 --batch-size $batch --eval-batch-size 16384 --epochs 3 \
      --optimizer sgd --lr 0.01 --quiet --out "$OUT/train-folder-$batch-$depth" \
      > "$OUT/train-folder-$batch-$depth.txt" 2>&1
  done
  echo "| preprocessed, $ROWS rows | $batch | $bare | $(rate "$OUT/train-folder-$batch-0.txt") | $(rate "$OUT/train-folder-$batch-2.txt") | $(eval_rate "$OUT/train-folder-$batch-0.txt") | $(eval_rate "$OUT/train-folder-$batch-2.txt") |" >> "$OUT/summary.md"
done
for depth in 0 2; do
  DLRM_PREFETCH=$depth timeout 150 $DLRM train --device "$DEVICE" --data synthetic:planted \
    --rows-cap 0 --train-samples 3000000 --val-samples 300000 --preset kaggle --precision bf16 \
    --batch-size 16384 --eval-batch-size 16384 --epochs 1 --optimizer sgd --lr 0.01 --quiet \
    --out "$OUT/train-planted-$depth" > "$OUT/train-planted-$depth.txt" 2>&1
done
echo "| planted synthetic, full kaggle tables | 16384 | (see gpu.sh bench) | $(rate "$OUT/train-planted-0.txt") | $(rate "$OUT/train-planted-2.txt") | $(eval_rate "$OUT/train-planted-0.txt") | $(eval_rate "$OUT/train-planted-2.txt") |" >> "$OUT/summary.md"
rm -rf "$DATA" "$OUT"/train-*/*.pt
cat "$OUT/summary.md"
