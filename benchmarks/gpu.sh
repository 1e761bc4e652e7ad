#!/usr/bin/env bash
# On a machine with a CUDA GPU, in this order, each step under its own timeout and a failure
# recorded without stopping the rest:
#   1. the machine: GPU, driver, torch, CPU, `dlrm env`;
#   2. the hybrid-parallel trainer on CUDA/nccl (torchrun, 1 rank: 300 steps of the tiny preset
#      through the CLI) and the 1-rank == single-process check on the GPU;
#   3. the tests that need CUDA (`pytest -k cuda`: every model kind trained on CUDA against
#      the CPU, the bench on CUDA events in 4 precisions with the dense layers timed on the
#      GPU, pinned prefetched batches, the native-kernel switch);
#   4. `dlrm train --device cuda` on the kaggle preset at full table sizes (planted data,
#      bf16): the rate a user gets through the CLI, to set beside the bare step's; then
#      benchmarks/gpu_train_input.sh: the same on a preprocessed folder beside `dlrm bench` on
#      it, with batches made between steps and ahead on a thread;
#   5. `dlrm bench sweep` over batch 2048, 16384, 65536 for kaggle (full tables, 2.2 GB) and
#      mlperf (tables capped at MLPERF_CAP rows; 2M: 26 tables x D=128, ~6 GB, 100x the L2),
#      tf32 and bf16, training. Ceilings (matmul per precision, copy and gather bandwidth) are
#      measured once per sweep; every dense layer is timed as bare GEMMs on the GPU.
# Writes machine.txt, one log per step, one JSON (a list of results) per sweep, charts, and
# summary.md (samples/s, step ms, fraction of the matmul peak, shares) under OUT.
# Stays within BUDGET_S seconds (default 540) by skipping the sweeps left when time is short.
# On an H200 (2026-11-29) all but step 5 took 292 s and step 5 alone about 3 minutes (it
# and step 3 have grown since): expect about 9 minutes, one device call with a 600 s limit
# in a 15-minute lease; BUDGET_S=420 leaves time to rerun a failed step.
# OUT holds dozens of files (and run folders): archive it to bring it back in one piece.
#
#   bash benchmarks/gpu.sh [OUT]          (default OUT=bench-gpu)
#
# Uses .venv/bin/python if it imports torch, else python3, and runs from a checkout without
# an install (src/ goes on PYTHONPATH when `import dlrm` fails): benchmarks/python_env.sh.
set -uo pipefail
OUT=${1:-bench-gpu}
BUDGET_S=${BUDGET_S:-540}
MLPERF_CAP=${MLPERF_CAP:-2000000}
mkdir -p "$OUT"
source "$(dirname "$0")/python_env.sh"
export PYTHONUNBUFFERED=1
DLRM="$PY -m dlrm"
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }
{
  echo "date: $(date -u)"; echo "host: $(hostname)"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-) x $(nproc)"
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
} 2>&1 | tee "$OUT/machine.txt"
if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu.sh: torch sees no CUDA device" >&2; exit 2
fi
timeout 60 $DLRM env > "$OUT/env.txt" 2>&1 || echo "dlrm env: FAILED (see $OUT/env.txt)"

CUDA_DIST_TEST=tests/distributed/test_shared_loop.py::test_one_rank_on_cuda_nccl_equals_one_process_on_cuda

echo "== [$(elapsed) s] distributed on CUDA/nccl (torchrun, 1 rank) =="
timeout 120 $PY -m torch.distributed.run --standalone --nproc_per_node=1 -m dlrm train \
  --device cuda --preset tiny --rows-cap 100000 --train-samples 400000 --val-samples 20000 \
  --batch-size 1024 --max-samples $((1024 * 300)) --eval-every 100 --optimizer adagrad \
  --lr 0.05 --quiet --out "$OUT/dist-cuda" > "$OUT/dist-cuda.txt" 2>&1 \
  && echo "dist-cuda: $(grep -E '^val AUC|throughput' "$OUT/dist-cuda.txt" | tr '\n' ' ')" \
  || echo "dist-cuda: FAILED (see $OUT/dist-cuda.txt)"
# Exactness: 1 rank on CUDA/nccl == plain DLRM on the same GPU (losses, AUC, weights).
timeout 120 $PY -m pytest -q -p no:warnings "$CUDA_DIST_TEST" > "$OUT/dist-cuda-exact.txt" 2>&1
echo "dist-cuda-exact: $(tail -1 "$OUT/dist-cuda-exact.txt")"

echo "== [$(elapsed) s] tests that need CUDA =="
timeout 240 $PY -m pytest -q -p no:warnings -k cuda tests --deselect "$CUDA_DIST_TEST" \
  > "$OUT/tests.txt" 2>&1
echo "tests: $(tail -1 "$OUT/tests.txt")"

echo "== [$(elapsed) s] dlrm train --device cuda, kaggle preset, full tables, bf16 =="
timeout 150 $DLRM train --device cuda --preset kaggle --rows-cap 0 --data synthetic:planted \
  --train-samples 4000000 --val-samples 400000 --batch-size 16384 --precision bf16 \
  --optimizer adagrad --lr 0.05 --epochs 1 --out "$OUT/train-cuda" > "$OUT/train-cuda.txt" 2>&1 \
  && echo "train-cuda: $(grep -E '^val AUC|throughput' "$OUT/train-cuda.txt" | tr '\n' ' ')" \
  || echo "train-cuda: FAILED (see $OUT/train-cuda.txt)"

echo "== [$(elapsed) s] dlrm train --device cuda against the bare step, batches made ahead or not =="
timeout 420 bash benchmarks/gpu_train_input.sh "$OUT/input" > "$OUT/input.txt" 2>&1
tail -6 "$OUT/input.txt"

echo "== [$(elapsed) s] bench =="
for preset in kaggle mlperf; do
  if [ "$preset" = mlperf ]; then cap=$MLPERF_CAP; else cap=0; fi
  for prec in tf32 bf16; do
    if [ "$(elapsed)" -gt $((BUDGET_S - 60)) ]; then echo "time budget reached: $preset $prec skipped"; continue; fi
    name="$preset-$prec"
    timeout 150 $DLRM bench sweep --device cuda --preset "$preset" --precision "$prec" \
      --vary batch_size=2048,16384,65536 --rows-cap "$cap" --warmup 5 --trials 5 --steps 10 \
      --quiet --json "$OUT/$name.json" --out "$OUT/$name" > "$OUT/$name.txt" 2>&1 \
      && echo "$name [$(elapsed) s]: $(grep -A4 'samples/s' "$OUT/$name.txt" | tr -s ' ' | tr '\n' ';')" \
      || echo "$name: FAILED (see $OUT/$name.txt)"
  done
done

$PY - "$OUT" <<'PYEOF' | tee "$OUT/summary.md"
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
rows, machine, ceilings = [], {}, {}
for p in sorted(out.glob("*.json")):
    results = json.loads(p.read_text())
    for r in results if isinstance(results, list) else [results]:
        c, comps = r["config"], r["components"]
        machine, ceilings[c["preset"], c["precision"]] = r["machine"], r.get("ceilings", {})
        share = lambda *names: 100 * sum(comps.get(n, {}).get("ms", 0) for n in names) / r["component_sum_ms"]
        peak = r.get("peak", {})
        rows.append((c["preset"], c["precision"], c["batch_size"], r["samples_per_s"],
                     r["step_ms"]["median"], peak.get("fraction_of_peak", float("nan")),
                     peak.get("gemm_fraction_of_peak", float("nan")),
                     r.get("fraction_of_roofline", float("nan")), r.get("limiter", "?"),
                     share("embedding_fwd", "embedding_bwd"),
                     share(*[n for n in comps if "mlp" in n]),
                     share("interaction_fwd", "interaction_bwd")))
if not rows:
    sys.exit("no bench results")
print(f"GPU: {machine.get('device_name')}, torch {machine.get('torch_version')}, "
      f"CUDA {machine.get('cuda_version')}\n")
print("| preset | precision | matmul peak TFLOP/s | copy GB/s | gather GB/s |")
print("|---|---|---|---|---|")
for (preset, prec), c in sorted(ceilings.items()):
    if c:
        print(f"| {preset} | {prec} | {c.get(f'matmul_{prec}_gflops', 0) / 1e3:.1f} | "
              f"{c.get('stream_gbps', 0):,.0f} | {c.get('gather_gbps', 0):,.0f} |")
print()
print("| preset | precision | batch | samples/s | step ms | step / matmul peak | GEMMs alone / peak "
      "| step / roofline | largest | embeddings % | MLPs % | interaction % |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for p, pr, b, s, ms, f, g, roof, lim, e, m, i in sorted(rows):
    print(f"| {p} | {pr} | {b} | {s:,.0f} | {ms:.2f} | {f:.3f} | {g:.3f} | {roof:.2f} | {lim} "
          f"| {e:.0f} | {m:.0f} | {i:.0f} |")
PYEOF
echo "total $(elapsed) s; results in $OUT"
