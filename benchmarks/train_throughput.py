"""Training and inference throughput of the `kaggle` preset against the reference design.

The reference (facebookresearch/dlrm's structure: 26 separate nn.EmbeddingBag(sparse=True)
modules, the li/lj-indexed interaction, a sigmoid + BCELoss, torch.optim.SGD over everything)
is re-implemented in tests/reference_dlrm.py and measured in the same run, so the ratios hold
on any machine. Tables: Criteo Kaggle sizes capped at 100k rows, one id per bag, `random` data.

    python benchmarks/train_throughput.py [--batch-sizes 128,2048] [--steps 60] [--json PATH]

Prints samples/s (median of trials) for: reference step, our fp32 step, our bf16 step, our fp32
step with data generation (end to end), and inference at the largest batch size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from reference_dlrm import ReferenceDLRM  # noqa: E402

from dlrm.config import preset  # noqa: E402
from dlrm.data.synthetic import SyntheticConfig, SyntheticData  # noqa: E402
from dlrm.models.dlrm import DLRM  # noqa: E402
from dlrm.training.loop import autocast  # noqa: E402
from dlrm.training.optim import build_optimizer  # noqa: E402


def timed(fn, steps: int, trials: int) -> list[float]:
    """Seconds per call, one value per trial (each trial runs ``steps`` calls)."""
    fn()
    fn()
    out = []
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        out.append((time.perf_counter() - start) / steps)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="128,2048")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--rows-cap", type=int, default=100_000)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    config = preset("kaggle", rows_cap=args.rows_cap)
    data = SyntheticData(SyntheticConfig(kind="random", table_sizes=config.table_sizes,
                                         rows_cap=None, seed=0))
    torch.manual_seed(0)
    np.random.seed(0)
    results: dict[str, dict[str, float]] = {}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, kaggle preset, tables "
          f"capped at {args.rows_cap:,} rows ({sum(config.table_sizes):,} rows), random data")
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        batches = [b for _, b in zip(range(8), data.batches("train", batch_size))]
        ref_inputs = []
        for b in batches:
            ids = b.sparse.values.view(config.num_sparse, batch_size)
            offsets = [torch.arange(batch_size) for _ in range(config.num_sparse)]
            ref_inputs.append((b.dense, offsets, list(ids), b.labels))

        ref = ReferenceDLRM(config.table_sizes, config.embedding_dim, config.bottom_mlp,
                            [config.top_mlp[0] and 367, *config.top_mlp])
        ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
        bce = torch.nn.BCELoss()
        ref_it = iter(range(10**9))

        def reference_step():
            dense, offsets, ids, labels = ref_inputs[next(ref_it) % len(ref_inputs)]
            ref_opt.zero_grad()
            bce(ref(dense, offsets, ids).squeeze(1), labels).backward()
            ref_opt.step()

        def our_step_fn(precision: str, with_data: bool):
            model = DLRM(config, check_inputs=False)
            opt = build_optimizer(model, "sgd", 0.1)
            stream = data.batches("train", batch_size) if with_data else None
            it = iter(range(10**9))
            loss_fn = torch.nn.BCEWithLogitsLoss()

            def step():
                b = next(stream) if stream is not None else batches[next(it) % len(batches)]
                with autocast("cpu", precision):
                    logits = model(b.dense, b.sparse)
                loss_fn(logits.float(), b.labels).backward()
                opt.step()
                opt.zero_grad()
            return step

        def samples_per_s(fn):
            per_step = timed(fn, args.steps, args.trials)
            return batch_size / statistics.median(per_step)

        row = {
            "reference": samples_per_s(reference_step),
            "ours_fp32": samples_per_s(our_step_fn("fp32", False)),
            "ours_fp32_end_to_end": samples_per_s(our_step_fn("fp32", True)),
            "ours_bf16": samples_per_s(our_step_fn("bf16", False)),
        }
        row["fp32_speedup"] = row["ours_fp32"] / row["reference"]
        row["bf16_speedup"] = row["ours_bf16"] / row["reference"]
        row["end_to_end_vs_step"] = row["ours_fp32_end_to_end"] / row["ours_fp32"]
        results[f"train_b{batch_size}"] = row
        print(f"B={batch_size:5d} train samples/s: reference {row['reference']:,.0f} | ours fp32 "
              f"{row['ours_fp32']:,.0f} ({row['fp32_speedup']:.2f}x) | ours fp32 + data "
              f"{row['ours_fp32_end_to_end']:,.0f} ({row['end_to_end_vs_step']:.2f} of step) | "
              f"ours bf16 {row['ours_bf16']:,.0f} ({row['bf16_speedup']:.2f}x)")

    batch_size = max(int(b) for b in args.batch_sizes.split(","))
    batches = [b for _, b in zip(range(8), data.batches("train", batch_size))]
    model = DLRM(config, check_inputs=False).eval()
    ref.eval()
    ids_lists = [(b.dense, [torch.arange(batch_size)] * config.num_sparse,
                  list(b.sparse.values.view(config.num_sparse, batch_size))) for b in batches]
    it = iter(range(10**9))

    @torch.no_grad()
    def ref_infer():
        ref(*ids_lists[next(it) % len(ids_lists)])

    def our_infer_fn(precision):
        @torch.inference_mode()
        def infer():
            b = batches[next(it) % len(batches)]
            with autocast("cpu", precision):
                model(b.dense, b.sparse)
        return infer

    infer = {name: batch_size / statistics.median(timed(fn, args.steps, args.trials))
             for name, fn in [("reference", ref_infer), ("ours_fp32", our_infer_fn("fp32")),
                              ("ours_bf16", our_infer_fn("bf16"))]}
    results[f"infer_b{batch_size}"] = infer
    print(f"B={batch_size:5d} inference samples/s: reference {infer['reference']:,.0f} | ours fp32 "
          f"{infer['ours_fp32']:,.0f} ({infer['ours_fp32'] / infer['reference']:.2f}x) | ours bf16 "
          f"{infer['ours_bf16']:,.0f} ({infer['ours_bf16'] / infer['reference']:.2f}x)")
    print("command: python " + " ".join(sys.argv))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
