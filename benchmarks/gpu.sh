#!/usr/bin/env bash
# On a machine with a CUDA GPU: the test suite (CUDA tests included), the distributed trainer on
# CUDA/nccl (torchrun, 1 rank: 300 steps through the CLI, and the 1-rank == single-process
# check), then `dlrm bench` on the kaggle and mlperf presets, tf32 and bf16, batch 2048 to
# 65536, training. Writes one JSON per run, the ceilings, and summary.md under OUT.
# Budget: under 8 minutes on one H100/A100 (the distributed step: well under a minute).
#
#   bash benchmarks/gpu.sh [OUT]          (default OUT=bench-gpu)
#
# Uses .venv/bin if present (a CUDA torch must be installed there), else python on PATH.
# mlperf tables are capped at 10M rows (26 tables, D=128: ~33 GB fp32) to fit 80 GB;
# kaggle runs at its full sizes (2.2 GB). Each step is timed with CUDA events.
set -uo pipefail
OUT=${1:-bench-gpu}
mkdir -p "$OUT"
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python; fi
DLRM="$PY -m dlrm"
START=$(date +%s)
{
  echo "date: $(date -u)"; echo "host: $(hostname)"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
} | tee "$OUT/machine.txt"
if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu.sh: torch sees no CUDA device" >&2; exit 2
fi

CUDA_DIST_TEST=tests/distributed/test_shared_loop.py::test_one_rank_on_cuda_nccl_equals_one_process_on_cuda

echo "== distributed on CUDA/nccl (torchrun, 1 rank) =="
# The hybrid-parallel CLI on cuda:0 with nccl: tiny preset, 300 steps, evaluations on the GPU.
timeout 120 $PY -m torch.distributed.run --standalone --nproc_per_node=1 -m dlrm train \
  --device cuda --preset tiny --rows-cap 100000 --train-samples 400000 --val-samples 20000 \
  --batch-size 1024 --max-samples $((1024 * 300)) --eval-every 100 --optimizer adagrad \
  --lr 0.05 --quiet --out "$OUT/dist-cuda" > "$OUT/dist-cuda.txt" 2>&1 \
  && echo "dist-cuda: $(grep -E '^val AUC|throughput' "$OUT/dist-cuda.txt" | tr '\n' ' ')" \
  || echo "dist-cuda: FAILED (see $OUT/dist-cuda.txt)"
# Exactness: 1 rank on CUDA/nccl == plain DLRM on the same GPU (losses, AUC, weights).
timeout 120 $PY -m pytest -q -p no:warnings "$CUDA_DIST_TEST" 2>&1 | tail -3 \
  | tee "$OUT/dist-cuda-exact.txt"

echo "== tests (CUDA tests run here, CPU tests too) =="
timeout 240 $PY -m pytest -q -x -p no:warnings --deselect "$CUDA_DIST_TEST" 2>&1 | tail -5 \
  | tee "$OUT/tests.txt"

run() {  # preset precision batch cap [extra...]
  local preset=$1 prec=$2 batch=$3 cap=$4; shift 4
  local name="$preset-$prec-$batch"
  timeout 120 $DLRM bench --device cuda --preset "$preset" --precision "$prec" \
    --batch-size "$batch" --rows-cap "$cap" --warmup 5 --trials 5 --steps 10 --quiet \
    --json "$OUT/$name.json" "$@" > "$OUT/$name.txt" 2>&1 \
    && echo "$name: $(grep 'end to end' "$OUT/$name.txt")" \
    || echo "$name: FAILED (see $OUT/$name.txt)"
}

echo "== bench =="
for preset in kaggle mlperf; do
  if [ "$preset" = mlperf ]; then cap=10000000; else cap=0; fi
  first=1
  for prec in tf32 bf16; do
    for batch in 2048 16384 65536; do
      if [ $first = 1 ]; then  # ceilings and charts once per preset
        run "$preset" "$prec" "$batch" "$cap" --out "$OUT/$preset-charts"; first=0
      else
        run "$preset" "$prec" "$batch" "$cap" --no-ceilings
      fi
      if [ $(( $(date +%s) - START )) -gt 440 ]; then echo "time budget reached"; break 3; fi
    done
  done
done

$PY - "$OUT" <<'PYEOF' | tee "$OUT/summary.md"
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
rows = []
for p in sorted(out.glob("*.json")):
    r = json.loads(p.read_text())
    c, comps = r["config"], r["components"]
    share = lambda *names: 100 * sum(comps.get(n, {}).get("ms", 0) for n in names) / r["component_sum_ms"]
    rows.append((c["preset"], c["precision"], c["batch_size"], r["samples_per_s"],
                 r["step_ms"]["median"], share("embedding_fwd", "embedding_bwd"),
                 share(*[n for n in comps if "mlp" in n]), share("interaction_fwd", "interaction_bwd")))
print(f"GPU: {r['machine']['device_name']}, torch {r['machine']['torch_version']}\n")
print("| preset | precision | batch | samples/s | step ms | embeddings % | MLPs % | interaction % |")
print("|---|---|---|---|---|---|---|---|")
for p, pr, b, s, ms, e, m, i in sorted(rows):
    print(f"| {p} | {pr} | {b} | {s:,.0f} | {ms:.2f} | {e:.0f} | {m:.0f} | {i:.0f} |")
PYEOF
echo "total $(( $(date +%s) - START )) s; results in $OUT"
