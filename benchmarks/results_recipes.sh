#!/usr/bin/env bash
# docs/results.md "Tuned recipes": every model kind at its own `small` recipe (chosen by
# benchmarks/tune_recipes.sh on each data set's validation rows; `small` resolves to the data
# set's own), 3 seeds, on the three real samples and on planted data, each kind tested against
# logistic regression at its optimum on the same rows; the reference recipe on Criteo for
# contrast.
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
# Each kind at its `small` recipe, which is the one tuned on each data set itself, with LR as
# the reference of the paired test and each row's seeds also scored as one ensemble; on
# Criteo the reference recipe too, for contrast.
$DLRM compare --data "$OUT/data/criteo" --models "$DEEP,lr" --recipes small,reference \
  --against lr:small --ensemble "${COMMON[@]}" --out "$OUT/results-criteo"
# The same Criteo rows with the 13 counts also as categories (criteo-tsv-buckets), every kind
# at its recipe tuned on them; DLRM also at the paper's dot interaction (its dot-only study).
$DLRM compare --data "$OUT/data/criteo-buckets" --models "$DEEP,lr" --recipes small \
  --against lr:small --ensemble "${COMMON[@]}" --out "$OUT/results-criteo-buckets"
for seed in 0 1 2; do  # DLRM at the recipe of its dot-only study (the paper's interaction)
  $DLRM train --data "$OUT/data/criteo-buckets" --model dlrm --seed "$seed" --threads 1 --quiet \
    --recipe "$OUT/tune3-criteo30-buckets-dlrm-arch/recipe.json" \
    --out "$OUT/results-criteo-buckets-dlrm-dot/seed$seed"
done
for data in avazu movielens; do
  $DLRM compare --data "$OUT/data/$data" --models "$DEEP,lr" --recipes small --ensemble \
    "${COMMON[@]}" --out "$OUT/results-$data"
done
# Planted data (tiny tables, D=16 as the recipes were tuned with; DLRM's recipe sets its MLPs):
# one epoch of 100k samples (the recipes' early stopping
# is on the 50k validation samples, the table on 50k test samples).
$DLRM compare --data synthetic:planted --preset tiny --embedding-dim 16 --models "$DEEP,lr" --recipes small \
  --train-samples 100000 --val-samples 50000 --test-samples 50000 --budget 100000 --seeds 3 \
  --threads 1 --quiet \
  --out "$OUT/results-planted"
uptime
