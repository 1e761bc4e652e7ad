#!/usr/bin/env bash
# Real-data check: train DLRM (kaggle preset shape) on the first 10,000 Criteo Kaggle rows,
# then score the 4,370 rows spread over the rest of train.txt and print the AUC.
#
#   benchmarks/criteo_head10k.sh SCORES_FILE
#
# Steps: `dlrm preprocess` the head rows (min-count 2: values seen once share the "rare" id,
# which is also where unseen values of new rows go), `dlrm train` with early stopping on the
# validation split (the last 714 head rows; settings chosen by validation AUC, see
# docs/results.md), `dlrm predict` on criteo-kaggle-spread4k/rows.txt
# writing one probability per row to SCORES_FILE, then the AUC of SCORES_FILE against the
# rows' labels. Environment: DLRM (the command, default `dlrm`), PYTHON (default python3),
# SHARED_DATA (default ../shared/data), WORK (scratch folder, default a new temp dir).
set -euo pipefail

SCORES=${1:?usage: $0 SCORES_FILE}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED_DATA=${SHARED_DATA:-$ROOT/../shared/data}
DLRM=${DLRM:-dlrm}
PYTHON=${PYTHON:-python3}
WORK=${WORK:-$(mktemp -d)}
HEAD=$SHARED_DATA/criteo-kaggle-head10k/train.txt
SPREAD=$SHARED_DATA/criteo-kaggle-spread4k/rows.txt
for f in "$HEAD" "$SPREAD"; do
    [ -f "$f" ] || { echo "missing $f (the shared real data)" >&2; exit 2; }
done

set -x
$DLRM preprocess criteo-kaggle --input "$HEAD" --out "$WORK/head10k" --min-count 2 --quiet
$DLRM train --preset kaggle --data "$WORK/head10k" --optimizer adam --lr 0.0005 \
    --batch-size 128 --epochs 4 --eval-every 20 --patience 5 --seed 0 --threads 1 \
    --out "$WORK/run" --quiet
CHECKPOINT=$WORK/run/best.pt
[ -f "$CHECKPOINT" ] || CHECKPOINT=$WORK/run/last.pt
$DLRM predict --checkpoint "$CHECKPOINT" --input "$SPREAD" --out "$SCORES"
set +x

# The AUC of the scores file itself (one probability per row of rows.txt, in order).
"$PYTHON" - "$SPREAD" "$SCORES" <<'PY'
import sys
import numpy as np
from dlrm.data.predict import roc_auc
labels = [int(line.split("\t", 1)[0]) for line in open(sys.argv[1])]
scores = np.loadtxt(sys.argv[2])
assert len(scores) == len(labels), (len(scores), len(labels))
print(f"spread4k AUC {roc_auc(np.array(labels), scores):.4f} over {len(labels)} rows "
      f"({sum(labels)} clicks)")
PY
