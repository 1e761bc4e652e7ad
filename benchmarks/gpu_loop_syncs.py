"""What the training loop's per-step host reads cost on a GPU, and what prefetching gains.

`dlrm train` reads two numbers from the device every step: whether the loss is finite (before
the backward, so a NaN never reaches the weights and the error names its step) and the loss
itself (progress bar, run log, TensorBoard). On CUDA each read waits for the GPU to finish
the work queued so far, so the host cannot launch step k+1 while the GPU runs step k. This
script runs the loop's step three ways on the same model and batches, in alternating trials:

- ``loop``: as `dlrm train` does on CUDA (batches made ahead on a thread, both reads);
- ``no-reads``: the same without the two reads (the losses stay on the device);
- ``between``: both reads, each batch made between two steps (``DLRM_PREFETCH=0``).

    python benchmarks/gpu_loop_syncs.py --data FOLDER [--batch-size 16384] [--device cuda]

Model: the kaggle preset on the folder's tables, bf16 autocast, SGD (as `dlrm bench`).
"""

from __future__ import annotations

import argparse
import itertools
import statistics

import torch
from torch import nn

from dlrm.config import preset
from dlrm.data.loader import MemmapDataSource
from dlrm.data.prefetch import prefetched
from dlrm.models import build_model
from dlrm.timing import synchronized_clock
from dlrm.training.loop import autocast
from dlrm.training.optim import build_optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--batch-size", type=int, default=16384)
    parser.add_argument("--steps", type=int, default=40, help="steps per trial")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = args.device
    data = MemmapDataSource(args.data)
    config = {**preset("kaggle").to_dict(), "table_sizes": list(data.table_sizes)}
    torch.manual_seed(0)
    model = build_model("dlrm", config).to(device)
    optimizer = build_optimizer(model, "sgd", 0.01)
    loss_fn = nn.BCEWithLogitsLoss()

    def step(batch, reads: bool) -> torch.Tensor | float:
        batch = batch.to(device)

        def forward_backward() -> torch.Tensor:
            with autocast(device, "bf16"):
                logits = model(batch.dense, batch.sparse)
            loss = loss_fn(logits.float(), batch.labels)
            if reads and not bool(torch.isfinite(loss)):
                raise FloatingPointError("diverged")
            loss.backward()
            return loss.detach()

        loss = optimizer.minimize(forward_backward)
        return float(loss) if reads else loss

    def trial(variant: str, epoch: int) -> float:
        batches = data.batches("train", args.batch_size, epoch=epoch, shuffle=True,
                               drop_last=True)
        depth = 0 if variant == "between" else 2
        with prefetched(itertools.islice(batches, args.steps + 3), device, depth) as ahead:
            it = iter(ahead)
            for batch in itertools.islice(it, 3):  # warm-up: the queue fills, kernels load
                step(batch, True)
            start = synchronized_clock(device)
            losses = [step(batch, variant != "no-reads") for batch in it]
            if variant == "no-reads":
                float(torch.stack(losses).sum())  # the same losses, read once
            seconds = synchronized_clock(device) - start
        return len(losses) * args.batch_size / seconds

    variants = ("loop", "no-reads", "between")
    rates: dict[str, list[float]] = {v: [] for v in variants}
    for k in range(args.trials):
        for v in variants:
            rates[v].append(trial(v, k))
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    print(f"{name}, kaggle preset on {len(data.table_sizes)} tables, "
          f"bf16, batch {args.batch_size}, {args.steps} steps x {args.trials} trials")
    base = statistics.median(rates["loop"])
    for v in variants:
        median = statistics.median(rates[v])
        print(f"{v:>9}: {median:>12,.0f} samples/s  ({median / base:.2f}x loop; "
              f"min {min(rates[v]):,.0f}, max {max(rates[v]):,.0f})")


if __name__ == "__main__":
    main()
