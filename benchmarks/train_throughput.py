"""Training and inference throughput of the `kaggle` preset against the reference design.

The reference (facebookresearch/dlrm's structure: 26 separate nn.EmbeddingBag(sparse=True)
modules, the li/lj-indexed interaction, a sigmoid + BCELoss, torch.optim.SGD over everything)
is re-implemented in tests/reference_dlrm.py and measured in the same run, so the ratios hold
on any machine. Tables: Criteo Kaggle sizes capped at 100k rows, one id per bag, `random` data.

    python benchmarks/train_throughput.py [--batch-sizes 128,2048] [--steps 60] [--json PATH]
                                          [--no-tune-allocator]

Prints samples/s for: reference step, our fp32 step, our bf16 step, our fp32 step with data
generation (end to end), our steps on PyTorch ops only (the native kernels of ``dlrm.ops``
switched off: what they add), the MLPs alone (the ceiling of any design: the same matmuls
with the embeddings and interaction taken away), and inference at the largest batch size.
Each is the median of --trials trials of --steps steps, the trials interleaved across the
variants so a slow spell of a shared machine hits them all alike. Every timed step gets a
distinct pre-generated batch (as in a real run; cycling a few batches would keep their
embedding rows in cache), except "+ data", which generates each batch as it goes.

``dlrm train`` tunes glibc malloc on CPU (``dlrm.allocator``); the benchmark does the same
for the whole process, so the reference is measured under the same allocator as ours (it gains
little from it: its temporaries are smaller). ``--no-tune-allocator`` measures both without.
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

from dlrm.allocator import tune_cpu_allocator  # noqa: E402
from dlrm.config import preset  # noqa: E402
from dlrm.data.synthetic import SyntheticConfig, SyntheticData  # noqa: E402
from dlrm.models.dlrm import DLRM  # noqa: E402
from dlrm.models.interactions import DotInteraction  # noqa: E402
from dlrm.ops.native import available, use_native  # noqa: E402
from dlrm.training.loop import autocast  # noqa: E402
from dlrm.training.optim import build_optimizer  # noqa: E402


def rates(fns: dict, batch_size: int, steps: int, trials: int) -> dict[str, float]:
    """Samples/s of each function: the median over ``trials`` of ``steps`` timed calls.

    The trials are interleaved (trial 1 of every function, then trial 2, ...), each after two
    untimed calls, so a slow spell of a shared machine falls on all of them rather than on
    whichever ran then: the ratios stay meaningful on a noisy 2-core VM.
    """
    seconds: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(trials):
        for name, fn in fns.items():
            fn()
            fn()
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            seconds[name].append((time.perf_counter() - start) / steps)
    return {name: batch_size / statistics.median(s) for name, s in seconds.items()}


def reference_model(config) -> ReferenceDLRM:
    top_in = DotInteraction.output_width(config.num_sparse, config.embedding_dim)
    return ReferenceDLRM(config.table_sizes, config.embedding_dim, config.bottom_mlp,
                         [top_in, *config.top_mlp])


def reference_inputs(config, batches):
    """The reference's per-table (offsets, ids) lists for our one-hot batches."""
    out = []
    for b in batches:
        batch_size = len(b)
        ids = list(b.sparse.values.view(config.num_sparse, batch_size))
        offsets = [torch.arange(batch_size)] * config.num_sparse
        out.append((b.dense, offsets, ids, b.labels))
    return out


def reference_train_step(ref, inputs):
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    bce = torch.nn.BCELoss()
    counter = iter(range(10**9))

    def step():
        dense, offsets, ids, labels = inputs[next(counter) % len(inputs)]
        opt.zero_grad()
        bce(ref(dense, offsets, ids).squeeze(1), labels).backward()
        opt.step()
    return step


def our_train_step(config, batches, precision, stream=None, native=True):
    """Our step; ``native=False`` runs the dlrm operators on their PyTorch implementations."""
    model = DLRM(config, check_inputs=False)
    opt = build_optimizer(model, "sgd", 0.1)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    counter = iter(range(10**9))

    def step():
        b = next(stream) if stream is not None else batches[next(counter) % len(batches)]
        with use_native(native):
            with autocast("cpu", precision):
                logits = model(b.dense, b.sparse)
            loss_fn(logits.float(), b.labels).backward()
            opt.step()
        opt.zero_grad()
    return step


def mlp_only_step(config, batch_size, precision):
    """The step of the MLPs alone: bottom and top forward/backward plus SGD on their weights,
    the interaction's output replaced by a fixed tensor. No design can train faster than this
    (2.85 MFLOP per sample), so it is the ceiling ours is measured against."""
    torch.manual_seed(0)
    model = DLRM(config, check_inputs=False)
    bottom, top = model.bottom_mlp, model.top_mlp
    opt = torch.optim.SGD([*bottom.parameters(), *top.parameters()], lr=0.1)
    dense = torch.randn(batch_size, config.num_dense)
    pairs = torch.randn(batch_size, top.widths[0] - config.embedding_dim)
    labels = torch.rand(batch_size).round()

    def step():
        with autocast("cpu", precision):
            x = bottom(dense)
            logits = top(torch.cat([x, pairs.to(x.dtype)], dim=1)).squeeze(1)
        torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels).backward()
        opt.step()
        opt.zero_grad()
    return step


def reference_infer(ref, inputs):
    counter = iter(range(10**9))

    @torch.inference_mode()
    def infer():
        dense, offsets, ids, _ = inputs[next(counter) % len(inputs)]
        ref(dense, offsets, ids)
    return infer


def our_infer(model, batches, precision):
    counter = iter(range(10**9))

    @torch.inference_mode()
    def infer():
        b = batches[next(counter) % len(batches)]
        with autocast("cpu", precision):
            model(b.dense, b.sparse)
    return infer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="128,2048")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--rows-cap", type=int, default=100_000)
    parser.add_argument("--json", default=None)
    parser.add_argument("--no-tune-allocator", dest="tune_allocator", action="store_false")
    args = parser.parse_args()
    tuned = args.tune_allocator and tune_cpu_allocator()

    config = preset("kaggle", rows_cap=args.rows_cap)
    data = SyntheticData(SyntheticConfig(kind="random", table_sizes=config.table_sizes,
                                         rows_cap=None, seed=0))
    torch.manual_seed(0)
    np.random.seed(0)
    ref = reference_model(config)
    results: dict[str, dict[str, float]] = {}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, kaggle preset, tables "
          f"capped at {args.rows_cap:,} rows ({sum(config.table_sizes):,} rows), random data, "
          f"glibc malloc {'tuned' if tuned else 'default'} (reference and ours alike), "
          f"native kernels {'on' if available() else 'UNAVAILABLE'}")
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    for batch_size in sizes:
        # Distinct batches for every timed step, as a real run sees: cycling a few cached
        # batches would keep their embedding rows in cache and flatter the step.
        distinct = (args.steps + 2) * args.trials
        batches = [b for _, b in zip(range(distinct), data.batches("train", batch_size))]
        inputs = reference_inputs(config, batches)
        row = rates({
            "reference": reference_train_step(ref, inputs),
            "ours_fp32": our_train_step(config, batches, "fp32"),
            "ours_fp32_end_to_end": our_train_step(
                config, batches, "fp32", data.batches("train", batch_size)),
            "ours_bf16": our_train_step(config, batches, "bf16"),
            "ours_fp32_torch_ops": our_train_step(config, batches, "fp32", native=False),
            "ours_bf16_torch_ops": our_train_step(config, batches, "bf16", native=False),
            "mlps_alone_fp32": mlp_only_step(config, batch_size, "fp32"),
            "mlps_alone_bf16": mlp_only_step(config, batch_size, "bf16"),
        }, batch_size, args.steps, args.trials)
        row["fp32_speedup"] = row["ours_fp32"] / row["reference"]
        row["bf16_speedup"] = row["ours_bf16"] / row["reference"]
        row["end_to_end_vs_step"] = row["ours_fp32_end_to_end"] / row["ours_fp32"]
        row["fp32_kernels_gain"] = row["ours_fp32"] / row["ours_fp32_torch_ops"]
        row["bf16_kernels_gain"] = row["ours_bf16"] / row["ours_bf16_torch_ops"]
        row["fp32_of_mlp_ceiling"] = row["ours_fp32"] / row["mlps_alone_fp32"]
        row["bf16_of_mlp_ceiling"] = row["ours_bf16"] / row["mlps_alone_bf16"]
        results[f"train_b{batch_size}"] = row
        print(f"B={batch_size:5d} train samples/s: reference {row['reference']:,.0f} | ours fp32 "
              f"{row['ours_fp32']:,.0f} ({row['fp32_speedup']:.2f}x) | ours fp32 + data "
              f"{row['ours_fp32_end_to_end']:,.0f} ({row['end_to_end_vs_step']:.2f} of step) | "
              f"ours bf16 {row['ours_bf16']:,.0f} ({row['bf16_speedup']:.2f}x)\n"
              f"         MLPs alone (the ceiling): fp32 {row['mlps_alone_fp32']:,.0f} "
              f"({row['mlps_alone_fp32'] / row['reference']:.2f}x the reference; ours at "
              f"{row['fp32_of_mlp_ceiling']:.0%}) | bf16 {row['mlps_alone_bf16']:,.0f} "
              f"({row['mlps_alone_bf16'] / row['reference']:.2f}x; ours at "
              f"{row['bf16_of_mlp_ceiling']:.0%})\n"
              f"         ours on PyTorch ops only (native kernels off): fp32 "
              f"{row['ours_fp32_torch_ops']:,.0f} (kernels give {row['fp32_kernels_gain']:.2f}x) "
              f"| bf16 {row['ours_bf16_torch_ops']:,.0f} "
              f"(kernels give {row['bf16_kernels_gain']:.2f}x)")

    batch_size = max(sizes)
    distinct = (args.steps + 2) * args.trials
    batches = [b for _, b in zip(range(distinct), data.batches("train", batch_size))]
    inputs = reference_inputs(config, batches)
    model = DLRM(config, check_inputs=False).eval()
    ref.eval()
    infer = rates({
        "reference": reference_infer(ref, inputs),
        "ours_fp32": our_infer(model, batches, "fp32"),
        "ours_bf16": our_infer(model, batches, "bf16"),
    }, batch_size, args.steps, args.trials)
    results[f"infer_b{batch_size}"] = infer
    print(f"B={batch_size:5d} inference samples/s: reference {infer['reference']:,.0f} | "
          f"ours fp32 {infer['ours_fp32']:,.0f} ({infer['ours_fp32'] / infer['reference']:.2f}x)"
          f" | ours bf16 {infer['ours_bf16']:,.0f} "
          f"({infer['ours_bf16'] / infer['reference']:.2f}x)")
    print("command: python " + " ".join(sys.argv))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
