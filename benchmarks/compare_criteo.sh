#!/usr/bin/env bash
# Baselines on real Criteo rows: train on the first 9,000 lines of criteo-kaggle-head10k
# (the last 1,000 are the validation split), test on criteo-kaggle-spread4k (4,370 rows from
# the whole file). One epoch, as the DLRM paper; then the paper preset (DLRM vs DCN, SGD and
# Adagrad). Small data: read the AUC SE column before comparing models.
set -euo pipefail
cd "$(dirname "$0")/.."
DLRM=${DLRM:-.venv/bin/dlrm}
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs}
uptime
set -x
# The shipped criteo-kaggle schema with a file-order 90/10 split and training-rows vocabulary.
mkdir -p "$OUT/data"
${PYTHON:-.venv/bin/python} -c 'import json, sys; from dlrm.data.pipeline.schema import load_schema
d = load_schema("criteo-kaggle").to_dict()
d.update(name="criteo-head10k", split={"order": "file", "fractions": {"train": 0.9, "val": 0.1}},
         vocabulary={"from": "train"})
json.dump(d, open(sys.argv[1], "w"), indent=1)' "$OUT/data/criteo-head10k.json"
$DLRM preprocess table --schema "$OUT/data/criteo-head10k.json" \
  --input "$DATA/criteo-kaggle-head10k/train.txt" \
  --test-input "$DATA/criteo-kaggle-spread4k/rows.txt" --out "$OUT/data/criteo-head10k" \
  --overwrite --quiet
$DLRM compare --data "$OUT/data/criteo-head10k" --preset kaggle \
  --models dlrm,dcn,dcnv2,dlrm_dcnv2,wdl,deepfm,lr --epochs 1 --seeds 3 --batch-size 128 \
  --curve-points 6 --threads 1 --quiet --out "$OUT/compare-criteo"
$DLRM compare --paper --data "$OUT/data/criteo-head10k" --seeds 3 --threads 1 --quiet \
  --out "$OUT/compare-criteo-paper"
