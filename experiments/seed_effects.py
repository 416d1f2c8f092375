"""How much of a probe gap the seed decides: recipes x seeds, split in two.

    python experiments/seed_effects.py \\
        --recipe "1200=experiments/results/s2d_final_1200_amd/s{seed}/photos" \\
        --recipe "2400=experiments/results/runlocal_2400_amd/s{seed}/photos" \\
        --random "experiments/results/conv1_s2d_1200/random{seed}/photos" \\
        --random "experiments/results/s2d_final_1200_amd/random_s{seed}/photos" \\
        --seeds 0,1,2,3,4,5,6

Each folder holds a linear probe's `probe.json`. A run's gap is its best layer's
test accuracy minus that of random init of the same seed (the first `--random`
pattern whose folder exists for that seed). The gaps form a recipes x seeds
table, split additively (two-way, no interaction):

    gap[r, s] = grand mean + recipe effect[r] + seed effect[s] + residual[r, s]

`seed_sd` is the spread of the seed means (what a seed's fixed draw of the
weights, which are also the pretrained run's starting point, and of the
probe's crops adds to every recipe alike); `residual_sd` (with (R-1)(S-1)
degrees of freedom) is what is left: the trajectory. A paired difference of
two recipes over n seeds has standard error residual_sd * sqrt(2 / n).
Prints a markdown table and writes `--out` JSON.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np


def best_accuracy(folder: pathlib.Path) -> float:
    """Best-layer test accuracy (%) of the probe in `folder` (probe.json holds
    one entry per probed layer)."""
    result = json.loads((folder / "probe.json").read_text())
    return 100 * max(layer["accuracy"] for layer in result.values())


def decompose(gaps: np.ndarray) -> dict:
    """Two-way additive split of a recipes x seeds table (see module doc)."""
    recipes, seeds = gaps.shape
    if recipes < 2 or seeds < 2:
        raise ValueError(f"need at least 2 recipes and 2 seeds, got {gaps.shape}")
    grand = gaps.mean()
    recipe_mean, seed_mean = gaps.mean(1), gaps.mean(0)
    residual = gaps - recipe_mean[:, None] - seed_mean[None, :] + grand
    residual_sd = float(np.sqrt((residual ** 2).sum() / ((recipes - 1) * (seeds - 1))))
    return {"grand_mean": float(grand), "recipe_means": recipe_mean.tolist(),
            "seed_means": seed_mean.tolist(), "seed_sd": float(seed_mean.std(ddof=1)),
            "residual_sd": residual_sd,
            "paired_se_per_seed_count": {n: residual_sd * float(np.sqrt(2 / n))
                                         for n in (3, 7, 10)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", action="append", required=True,
                        help="NAME=folder pattern with {seed}; repeat per recipe")
    parser.add_argument("--random", action="append", required=True,
                        help="random-init probe folder pattern with {seed}; the first "
                             "that exists for a seed is used")
    parser.add_argument("--seeds", default="0,1,2,3,4,5,6")
    parser.add_argument("--out", default="experiments/results/seed_effects.json")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    recipes = dict(r.split("=", 1) for r in args.recipe)

    def random_best(seed):
        for pattern in args.random:
            folder = pathlib.Path(pattern.format(seed=seed))
            if (folder / "probe.json").exists():
                return best_accuracy(folder)
        raise FileNotFoundError(f"no random-init probe for seed {seed} in {args.random}")

    baseline = [random_best(s) for s in seeds]
    gaps = np.array([[best_accuracy(pathlib.Path(p.format(seed=s))) - b
                      for s, b in zip(seeds, baseline)] for p in recipes.values()])
    split = decompose(gaps)
    print("| recipe | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |")
    print("|---" * (len(seeds) + 2) + "|")
    for name, row, mean in zip(recipes, gaps, split["recipe_means"]):
        print(f"| {name} | " + " | ".join(f"{g:+.1f}" for g in row) + f" | {mean:+.2f} |")
    print("| seed mean | " + " | ".join(f"{m:+.1f}" for m in split["seed_means"]) + " | |")
    print(f"\nseed sd {split['seed_sd']:.2f}, residual sd {split['residual_sd']:.2f}; "
          "paired standard error of a recipe difference over n seeds: "
          + ", ".join(f"n={n}: {se:.2f}" for n, se in split["paired_se_per_seed_count"].items()))
    out = {"recipes": recipes, "random": args.random, "seeds": seeds,
           "random_best": baseline, "gaps": gaps.tolist(), **split}
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
