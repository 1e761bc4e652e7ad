#!/usr/bin/env bash
# Baselines on the Avazu 9k sample and MovieLens-100K (rating >= 4 is a click).
set -euo pipefail
cd "$(dirname "$0")/.."
DLRM=${DLRM:-.venv/bin/dlrm}
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs}
uptime
set -x
$DLRM preprocess table --schema avazu --input "$DATA/avazu-9k/train.csv" \
  --out "$OUT/data/avazu-9k" --overwrite --quiet
$DLRM compare --data "$OUT/data/avazu-9k" --preset kaggle \
  --models dlrm,dcn,dcnv2,wdl,deepfm,lr --epochs 1 --seeds 3 --batch-size 128 \
  --curve-points 6 --threads 1 --quiet --out "$OUT/compare-avazu"
$DLRM preprocess table --schema movielens-100k --input "$DATA/movielens-100k" \
  --out "$OUT/data/movielens-100k" --overwrite --quiet
$DLRM compare --data "$OUT/data/movielens-100k" --preset kaggle \
  --models dlrm,dcn,dcnv2,wdl,deepfm,lr --budget 240000 --seeds 3 --batch-size 256 \
  --curve-points 6 --threads 1 --quiet --out "$OUT/compare-movielens"
