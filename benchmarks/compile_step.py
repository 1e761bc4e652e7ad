"""A `torch.compile`d training step of the `kaggle` DLRM against the eager one, same run.

    python benchmarks/compile_step.py [--batch-sizes 128,2048] [--steps 20] [--trials 5]
                                      [--precision fp32|bf16] [--rows-cap 100000]

The dlrm operators (``dlrm.ops``) are single nodes of the compiled graph, so the native
kernels run in both; the compiler may fuse what lies around them (casts, the loss, the
concatenations). Prints, for each batch size: the graph count and graph breaks
(``torch._dynamo.explain``), the largest difference between compiled and eager logits, and
samples/s of eager and compiled steps (forward, backward with the fused row updates, optimizer
step), the median of --trials trials of --steps steps each, the two alternating trial by
trial so a slow spell of a shared machine hits both alike.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time

import torch

from dlrm.allocator import tune_cpu_allocator
from dlrm.config import preset
from dlrm.features import SparseFeatures
from dlrm.models import DLRM
from dlrm.ops import native
from dlrm.training.optim import build_optimizer


def make_batches(config, batch: int, count: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        ids = torch.stack([torch.randint(0, n, (batch,), generator=gen)
                           for n in config.table_sizes], 1)
        out.append((torch.rand(batch, config.num_dense, generator=gen),
                    SparseFeatures.from_ids(ids),
                    torch.randint(0, 2, (batch,), generator=gen).float()))
    return out


def stepper(model, optimizer, batches, precision: str):
    counter = iter(range(10 ** 9))

    def step() -> None:
        dense, sparse, labels = batches[next(counter) % len(batches)]
        autocast = torch.autocast("cpu", torch.bfloat16) if precision == "bf16" \
            else contextlib.nullcontext()
        with autocast:
            logits = model(dense, sparse)
        torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels).backward()
        optimizer.step()
        optimizer.zero_grad()
    return step


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="128,2048")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--rows-cap", type=int, default=100_000)
    args = parser.parse_args()
    tune_cpu_allocator()
    config = preset("kaggle", rows_cap=args.rows_cap)
    print(f"CPU: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{native.status()}, {args.precision}, tables capped at {args.rows_cap:,} rows")
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        batches = make_batches(config, batch, 8)
        models = {}
        for name in ("eager", "compiled"):
            torch.manual_seed(0)
            model = DLRM(config, check_inputs=False)
            optimizer = build_optimizer(model, "sgd", 0.1)
            runnable = torch.compile(model) if name == "compiled" else model
            models[name] = (model, runnable, optimizer)
        eager_model, compiled, _ = models["eager"][0], models["compiled"][1], None
        explained = torch._dynamo.explain(eager_model)(*batches[0][:2])
        with torch.no_grad():
            diff = float((compiled(*batches[0][:2]) - eager_model(*batches[0][:2])).abs().max())
        steps = {name: stepper(runnable, optimizer, batches, args.precision)
                 for name, (_, runnable, optimizer) in models.items()}
        tick = time.perf_counter()
        steps["compiled"]()  # compiles forward and backward
        compile_s = time.perf_counter() - tick
        times: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(args.trials):
            for name, step in steps.items():
                step()
                step()
                tick = time.perf_counter()
                for _ in range(args.steps):
                    step()
                times[name].append((time.perf_counter() - tick) / args.steps)
        rate = {name: batch / statistics.median(t) for name, t in times.items()}
        print(f"B={batch}: {explained.graph_count} graph, {explained.graph_break_count} graph "
              f"breaks, max |compiled - eager| logit {diff:.2e}, compile {compile_s:.1f} s; "
              f"eager {rate['eager']:,.0f} samples/s, compiled {rate['compiled']:,.0f} "
              f"samples/s: compiled / eager = {rate['compiled'] / rate['eager']:.3f}")
    print("command: python benchmarks/compile_step.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()))


if __name__ == "__main__":
    main()
