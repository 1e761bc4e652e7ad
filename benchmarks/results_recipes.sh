#!/usr/bin/env bash
# docs/results.md "Tuned recipes": every model kind at its own `small` recipe (chosen by
# benchmarks/tune_recipes.sh on Criteo head10k validation rows), 3 seeds, on the three real
# samples and on planted data; logistic regression at the recipe its own study chose on each
# data set (its optimum there); the reference recipe on Criteo for contrast.
#
#   benchmarks/tune_recipes.sh && benchmarks/results_recipes.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DLRM=${DLRM:-.venv/bin/dlrm}
OUT=${OUT:-runs}
DEEP=dlrm,dcn,dcnv2,dlrm_dcnv2,wdl,deepfm
COMMON=(--preset kaggle --seeds 3 --threads 1 --quiet)
uptime
set -x
$DLRM compare --data "$OUT/data/criteo" --models "$DEEP,lr" --recipes small,reference \
  "${COMMON[@]}" --out "$OUT/results-criteo"
$DLRM compare --data "$OUT/data/avazu" --models "$DEEP" --recipes small,reference \
  "${COMMON[@]}" --out "$OUT/results-avazu"
$DLRM compare --data "$OUT/data/movielens" --models "$DEEP" --recipes small "${COMMON[@]}" \
  --out "$OUT/results-movielens"
for data in avazu movielens; do
  $DLRM compare --data "$OUT/data/$data" --models lr --recipes "$OUT/tune-$data-lr/recipe.json" \
    "${COMMON[@]}" --out "$OUT/results-$data-lr"
  # Each deep kind at the recipe its own study chose on this data set.
  for kind in ${DEEP//,/ }; do
    $DLRM compare --data "$OUT/data/$data" --models "$kind" \
      --recipes "$OUT/tune-$data-$kind/recipe.json" "${COMMON[@]}" \
      --out "$OUT/results-$data-$kind"
  done
done
# Planted data (tiny tables, D=16 as the recipes were tuned with; DLRM's recipe sets its MLPs):
# one epoch of 100k samples (the recipes' early stopping
# is on the 50k validation samples, the table on 50k test samples).
$DLRM compare --data synthetic:planted --preset tiny --embedding-dim 16 --models "$DEEP,lr" --recipes small \
  --train-samples 100000 --val-samples 50000 --test-samples 50000 --budget 100000 --seeds 3 \
  --threads 1 --quiet \
  --out "$OUT/results-planted"
uptime
