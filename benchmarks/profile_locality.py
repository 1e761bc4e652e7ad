"""How closely data drawn from a profile reproduces the real rows' LRU stack distances, over
seeds: the figure docs/benchmarks.md ("Data profiles") quotes.

Reads the 10,000 Criteo Kaggle head rows in file order (../shared/data/criteo-kaggle-head10k),
profiles them, draws as many rows from the profile with locality "profile" and "iid" for each
seed, re-profiles them and counts the stack-distance quantiles (26 features x 6 quantiles)
that miss the source's by more than 10% (or by more than one position below 10, where one
position is already more than 10%).

Usage: python benchmarks/profile_locality.py [--seeds 10]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from dlrm.data.profile import ProfileData, fit_profile

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from profile_vs_real import DATA, read_criteo  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=10)
    args = p.parse_args()
    path = DATA / "train.txt"
    if not path.is_file():
        print(f"skipped: {path} not found (the shared Criteo sample)", file=sys.stderr)
        return 0
    print("command: python " + " ".join(sys.argv))
    real = read_criteo(path, 4_000_000)
    profile = fit_profile(real, "train")
    rows = profile["rows"]
    source = [np.array(f["stack_distance"]["distance"]) for f in profile["features"]]
    for locality in ("profile", "iid"):
        misses, worst = 0, 0.0
        for seed in range(args.seeds):
            drawn = ProfileData(profile, rows, seed=seed, split_fractions=(("train", 1.0),),
                                locality=locality)
            for s, f in zip(source, fit_profile(drawn, "train")["features"]):
                g = np.array(f["stack_distance"]["distance"])
                miss = np.abs(g - s) > np.maximum(0.1 * s, 1.0)
                misses += int(miss.sum())
                if miss.any():
                    worst = max(worst, float((np.abs(g - s) / s)[miss].max()))
        total = args.seeds * len(source) * len(source[0])
        print(f"locality {locality:<8} {misses:>4} of {total} quantiles miss by more than 10% "
              f"(worst {worst:.0%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
