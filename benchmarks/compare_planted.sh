#!/usr/bin/env bash
# Baselines on planted synthetic data (known Bayes-optimal AUC): 6 models x 3 seeds.
# One intra-op thread: on a shared 2-core machine, torch's default of 2 threads ran 10-20x
# slower under load (measured 2026-11-26, load average ~9).
set -euo pipefail
cd "$(dirname "$0")/.."
DLRM=${DLRM:-.venv/bin/dlrm}
OUT=${OUT:-runs/compare-planted}
uptime
set -x
$DLRM compare --data synthetic:planted --preset tiny --models dlrm,dcn,dcnv2,wdl,deepfm,lr \
  --budget 300000 --seeds 3 --val-samples 50000 --batch-size 256 --curve-points 6 \
  --threads 1 --quiet --out "$OUT"
# Longer: 2M samples, 2 seeds, to see which models reach the interactions.
$DLRM compare --data synthetic:planted --preset tiny --models dlrm,dcn,dcnv2,wdl,deepfm,lr \
  --budget 2000000 --seeds 2 --val-samples 50000 --batch-size 256 --curve-points 8 \
  --threads 1 --quiet --out "${OUT}-2M"
