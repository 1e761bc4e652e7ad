"""Row-wise Adagrad's duplicate-id merge: ``grad.coalesce()`` vs ``torch.unique`` + a sum.

Both give the summed gradient row of every distinct id (checked here to be equal). Times the
whole row-wise Adagrad step with each merge on a Criteo-like batch (Zipf ids over a fused
table), medians of --repeats, as a ratio against coalesce measured in the same run.

    python benchmarks/rowwise_adagrad_dedup.py --rows 2000000 --dim 16 --ids 53248
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch


def merge_coalesce(ids: torch.Tensor, rows: torch.Tensor, num_rows: int):
    grad = torch.sparse_coo_tensor(ids.unsqueeze(0), rows, (num_rows, rows.shape[1]),
                                   check_invariants=False).coalesce()
    return grad.indices()[0], grad.values()


def merge_unique(ids: torch.Tensor, rows: torch.Tensor, num_rows: int):
    unique_ids, inverse = torch.unique(ids, return_inverse=True)
    summed = rows.new_zeros(unique_ids.numel(), rows.shape[1]).index_add_(0, inverse, rows)
    return unique_ids, summed


def merge_unique_scatter(ids: torch.Tensor, rows: torch.Tensor, num_rows: int):
    unique_ids, inverse = torch.unique(ids, return_inverse=True)
    index = inverse.unsqueeze(1).expand(-1, rows.shape[1])
    summed = rows.new_zeros(unique_ids.numel(), rows.shape[1]).scatter_add_(0, index, rows)
    return unique_ids, summed


def step(weight, acc, ids, rows, merge, lr=0.01, eps=1e-8):
    ids, rows = merge(ids, rows, weight.shape[0])
    acc_rows = acc.index_select(0, ids) + rows.pow(2).mean(1)
    acc.index_copy_(0, ids, acc_rows)
    weight.index_add_(0, ids, rows * (lr / (acc_rows.sqrt() + eps)).unsqueeze(1), alpha=-1.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--ids", type=int, default=26 * 2048, help="looked-up ids per batch (F*B)")
    p.add_argument("--zipf", type=float, default=1.1)
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args()
    gen = torch.Generator().manual_seed(0)
    ranks = torch.arange(1, args.rows + 1, dtype=torch.float64)
    probs = ranks.pow(-args.zipf)
    ids = torch.multinomial(probs / probs.sum(), args.ids, replacement=True, generator=gen)
    rows = torch.randn(args.ids, args.dim, generator=gen)

    a_ids, a_rows = merge_coalesce(ids, rows, args.rows)
    for merge in (merge_unique, merge_unique_scatter):
        b_ids, b_rows = merge(ids, rows, args.rows)
        assert torch.equal(a_ids, b_ids)
        torch.testing.assert_close(a_rows, b_rows)

    weight = torch.randn(args.rows, args.dim)
    acc = torch.zeros(args.rows)
    merges = (("coalesce", merge_coalesce), ("unique", merge_unique),
              ("unique+scatter", merge_unique_scatter))
    times: dict[str, list[float]] = {name: [] for name, _ in merges}
    for _ in range(args.repeats):  # interleaved, so load changes hit both alike
        for name, merge in merges:
            tick = time.perf_counter()
            step(weight, acc, ids, rows, merge)
            times[name].append(time.perf_counter() - tick)
    print("command: " + " ".join(["python", *sys.argv]))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"distinct ids {a_ids.numel()} of {args.ids}")
    base = statistics.median(times["coalesce"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:>14}: median {med * 1e3:.2f} ms  ({base / med:.2f}x vs coalesce)")


if __name__ == "__main__":
    main()
