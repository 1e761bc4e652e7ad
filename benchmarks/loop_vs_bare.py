"""`dlrm train`'s step against `dlrm bench`'s bare step, in one process (issue 15, goal 3).

One model, one data folder, two ways to run a training step, in alternating trials:

- ``bare``: the step `dlrm bench --data` times (``dlrm.bench.runner``): batches in file
  order, no input checks, forward, loss, backward, SGD;
- ``loop``: the step `dlrm train` runs (``SingleProcessStrategy.train_step``): shuffled
  batches of the training split (its recipe), the model's input checks (NaN/inf dense values,
  ids inside their tables), the loss's finiteness check and the loss read back.

Why one process: on a shared host whose speed drifts by 10-30% from minute to minute, a
`dlrm bench` run and a `dlrm train` run one after the other cannot resolve a 5% difference;
short trials alternating in one process (the order flipped every trial) can.

    python benchmarks/loop_vs_bare.py --data FOLDER [--batch-size 2048] [--precision bf16]
        [--trials 7] [--steps 20]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dlrm.allocator import tune_cpu_allocator
from dlrm.bench.ceilings import machine_description
from dlrm.bench.inputs import cycle_batches
from dlrm.bench.runner import _Stepper
from dlrm.config import preset
from dlrm.data.loader import MemmapDataSource
from dlrm.models import build_model
from dlrm.training.loop import SingleProcessStrategy, TrainConfig
from dlrm.training.optim import build_optimizer

WARMUP = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a preprocessed data folder")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--trials", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per trial")
    parser.add_argument("--lr", type=float, default=0.01)
    args = parser.parse_args()
    tune_cpu_allocator()
    data = MemmapDataSource(args.data)
    config = {**preset("kaggle").to_dict(), "table_sizes": list(data.table_sizes)}
    torch.manual_seed(0)
    model = build_model("dlrm", config)
    # The bench's stepper builds its own SGD over the same weights (no state: the same
    # updates as the loop's optimizer, which is built second so its row update is the one
    # the lookup applies; both at the same lr).
    bare = _Stepper(model, cycle_batches(data, args.batch_size), torch.device("cpu"),
                    args.precision, "train", args.lr)
    train_config = TrainConfig(batch_size=args.batch_size, precision=args.precision,
                               lr=args.lr, device="cpu")
    loop = SingleProcessStrategy("dlrm", config, model, build_optimizer(model, "sgd", args.lr),
                                 data, train_config, Path(tempfile.gettempdir()))

    def bare_trial(_: int) -> float:
        model.check_inputs = False  # as dlrm bench
        for _ in range(WARMUP):
            bare.fused()
        start = time.perf_counter()
        for _ in range(args.steps):
            bare.fused()
        return args.steps * args.batch_size / (time.perf_counter() - start)

    def loop_trial(trial: int) -> float:
        model.check_inputs = True  # as dlrm train
        batches = data.batches("train", args.batch_size, epoch=trial, shuffle=True,
                               drop_last=True)
        batches = itertools.islice(batches, WARMUP + args.steps)
        for step, batch in enumerate(itertools.islice(batches, WARMUP)):
            loop.train_step(batch, step)
        start = time.perf_counter()
        for step, batch in enumerate(batches):
            loop.train_step(batch, step)
        return args.steps * args.batch_size / (time.perf_counter() - start)

    rates: dict[str, list[float]] = {"bare": [], "loop": []}
    for trial in range(args.trials):
        order = (("bare", bare_trial), ("loop", loop_trial))
        for name, run in order if trial % 2 == 0 else order[::-1]:
            rates[name].append(run(trial))
    cpu = machine_description(torch.device("cpu"))
    print(f"{cpu['cpu_model']}, {cpu['threads']} threads, torch {cpu['torch_version']}; "
          f"kaggle preset on {args.data} ({sum(data.table_sizes):,} table rows), "
          f"{args.precision}, batch {args.batch_size}, {args.trials} trials x {args.steps} "
          f"steps each way")
    for name, values in rates.items():
        print(f"{name:>5}: median {statistics.median(values):>9,.0f} samples/s "
              f"(min {min(values):,.0f}, max {max(values):,.0f})")
    ratios = [loop / bare for loop, bare in zip(rates["loop"], rates["bare"])]
    print(f"loop / bare: median {statistics.median(ratios):.3f} over trials "
          f"({', '.join(f'{r:.3f}' for r in ratios)})")


if __name__ == "__main__":
    main()
