"""The scale curve: linear probes of checkpoints along one pretraining run,
against random encoders of the same architecture, on two real datasets.

    python experiments/scale_curve.py                                 # runlocal, 0..3000 steps
    python experiments/scale_curve.py --steps=300,1200,3000,10000 --seeds=0,1,2
    python experiments/scale_curve.py --preset=long --steps=1000,4000,8000

Per seed, one pretraining run (`python -m mtssl.main
--config=configs/pretrain.py:<preset>`, `--config.seed=<seed>`) is taken to
each requested step in turn: the run resumes from its previous checkpoint,
which training allows exactly, so the checkpoint at step k is the one an
uninterrupted run would have written there (at a constant learning rate:
the script turns off `optim.lr_decay_fractions`, which would move with
each target step). Each checkpoint is probed with
the standard protocol (`configs/linear_probe.py` defaults: post-ReLU taps,
running BatchNorm statistics, colour images) on every dataset (default the
embedded `photos` and `digits`); step 0 is a random-init encoder of the run's
architecture and input size, with the seed as its init seed.

Every command is a subprocess, recorded verbatim; finished pieces (a
checkpoint, a probe.json) are reused, so an interrupted script resumes.
Outputs: `<out>.json` (rows: seed, step, dataset, per-layer accuracy),
`<out>.md` (best layer per dataset, mean +- half-range over seeds, and the
per-layer tables) and `<out>.png` (best-layer accuracy against steps, random
baseline dashed).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import (
    ROOT,
    load_config,
    machine,
    printable,
    result_of,
    run_logged,
    spread_cell,
)

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")


def pretrain_command(preset: str, run_dir: pathlib.Path, seed: int, steps: int,
                     extra: list[str], render_cache: str = "") -> list[str]:
    return [sys.executable, "-m", "mtssl.main", f"--config=configs/pretrain.py:{preset}",
            f"--workdir={run_dir}", f"--config.seed={seed}", f"--config.num_steps={steps}",
            # Only the checkpoints the curve probes (plus one to resume from).
            "--config.checkpoint.every_steps=1000000", "--config.checkpoint.keep=1000",
            # A constant rate: decays at fractions of num_steps would move with
            # each target step the run is resumed to.
            "--config.optim.lr_decay_fractions=()",
            "--config.log.images_every_steps=0",
            f"--config.synthetic.render.cache_dir={render_cache}", *extra]


def probe_command(probe_dir: pathlib.Path, checkpoint: str, dataset: str, seed: int,
                  architecture: dict) -> list[str]:
    command = [sys.executable, "-m", "mtssl.eval.linear_probe",
               "--config=configs/linear_probe.py", f"--workdir={probe_dir}",
               f"--config.checkpoint={checkpoint}", f"--config.dataset={dataset}",
               f"--config.seed={seed}"]
    if not checkpoint:   # random init: the run's architecture at its input size
        command += [f"--config.{k}={v}" for k, v in architecture.items()]
    return command


def curve(args) -> list[dict]:
    config = load_config(f"configs/pretrain.py:{args.preset}")
    architecture = {"model.encoder": config.model.encoder, "model.width": config.model.width,
                    "model.norm": config.model.norm, "image_size": config.image_size}
    runs = pathlib.Path(args.runs)
    steps = sorted(int(s) for s in args.steps.split(","))
    datasets = args.datasets.split(",")
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        run_dir = runs / f"seed{seed}" / "run"
        for step in [0, *steps]:
            commands = []
            checkpoint = ""
            if step:
                checkpoint = str(run_dir / "checkpoints" / str(step))
                command = pretrain_command(args.preset, run_dir, seed, step,
                                           args.pretrain_override, args.render_cache)
                commands.append(printable(command))
                if not pathlib.Path(checkpoint).is_dir():
                    run_logged(command, runs / f"seed{seed}" / f"pretrain_{step}.log")
            for dataset in datasets:
                name = dataset.replace(":", "_").replace("/", "_")
                probe_dir = runs / f"seed{seed}" / f"probe_{name}_{step}"
                command = probe_command(probe_dir, checkpoint, dataset, seed, architecture)
                result = result_of(command, probe_dir, "probe.json")
                accuracy = {k: v["accuracy"] for k, v in result.items()}
                rows.append({"seed": seed, "step": step, "dataset": dataset,
                             "accuracy": accuracy, "best_layer": max(accuracy, key=accuracy.get),
                             "commands": commands + [printable(command)]})
                print(f"seed {seed} step {step:>6} {dataset}: "
                      + " ".join(f"{k} {100 * a:.1f}" for k, a in accuracy.items()), flush=True)
    return rows


def best(rows: list[dict], step: int, dataset: str) -> list[float]:
    return [max(r["accuracy"].values()) for r in rows
            if r["step"] == step and r["dataset"] == dataset]


def markdown(rows: list[dict], args, info: dict) -> str:
    steps = sorted({r["step"] for r in rows})
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    lines = [f"Scale curve ({info['date']}, {info['machine']['processor']}, "
             f"{info['machine']['cpu_count']} cores, jax {info['machine']['jax']}): "
             f"`configs/pretrain.py:{args.preset}`"
             + (f" with {' '.join(args.pretrain_override)}" if args.pretrain_override else "")
             + f", seeds {', '.join(map(str, seeds))}; linear-probe test accuracy % "
             "(standard protocol), mean ± half-range over seeds. Step 0 = random init of "
             "the same architecture.", "",
             "| step | " + " | ".join(f"{d} best layer | {d} vs random" for d in datasets) + " |",
             "|---" * (1 + 2 * len(datasets)) + "|"]
    for step in steps:
        cells = []
        for d in datasets:
            values, random = best(rows, step, d), best(rows, 0, d)
            cells.append(spread_cell(values, 100, 1))
            gap = [100 * (v - r) for v, r in zip(values, random)]
            cells.append("–" if step == 0 else spread_cell(gap, 1, 1, signed=True))
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    for d in datasets:
        lines += ["", f"Per layer, {d}:", "", "| step | " + " | ".join(LAYERS) + " |",
                  "|---" * (1 + len(LAYERS)) + "|"]
        for step in steps:
            rs = [r for r in rows if r["step"] == step and r["dataset"] == d]
            lines.append(f"| {step} | " + " | ".join(
                spread_cell([r["accuracy"][layer] for r in rs if layer in r["accuracy"]], 100, 1)
                for layer in LAYERS) + " |")
    lines += ["", "Commands (the last step of seed 0; other steps change num_steps and "
              "the checkpoint, other seeds `--config.seed`):", "", "```"]
    last = [r for r in rows if r["seed"] == seeds[0] and r["step"] in (0, steps[-1])]
    lines += list(dict.fromkeys(c for r in last for c in r["commands"]))
    lines += ["```", ""]
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = sorted({r["step"] for r in rows if r["step"]})
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, d in enumerate(dict.fromkeys(r["dataset"] for r in rows)):
        colour = f"C{i}"
        mean = [100 * np.mean(best(rows, s, d)) for s in steps]
        ax.plot(steps, mean, "o-", color=colour, label=f"{d}: pretrained")
        ax.axhline(100 * np.mean(best(rows, 0, d)), color=colour, ls="--",
                   label=f"{d}: random init")
    ax.set_xscale("log")
    ax.set_xlabel("pretraining steps")
    ax.set_ylabel("best-layer linear probe test accuracy (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="runlocal", help="configs/pretrain.py preset")
    parser.add_argument("--steps", default="300,1200,3000")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--datasets", default="photos,digits",
                        help="linear-probe datasets (configs/linear_probe.py dataset strings)")
    parser.add_argument("--runs", default="runs/scale_curve", help="runs and probes")
    parser.add_argument("--out", default="experiments/results/scale_curve",
                        help="results as <out>.json, <out>.md and <out>.png")
    parser.add_argument("--render_cache", default="runs/render_cache",
                        help="render cache shared by the runs (seeds draw overlapping "
                             "scenes); '' = render every time")
    parser.add_argument("--pretrain_override", action="append", default=[],
                        help="extra pretraining flag, e.g. --pretrain_override="
                             "--config.da.enabled=False (repeatable)")
    args = parser.parse_args()
    os.chdir(ROOT)                 # relative paths in the recorded commands
    rows = curve(args)
    info = {"date": datetime.date.today().isoformat(), "machine": machine()}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(f"{args.out}.json", "w") as f:
        json.dump({"info": info, "args": vars(args), "rows": rows}, f, indent=1)
    table = markdown(rows, args, info)
    pathlib.Path(f"{args.out}.md").write_text(table)
    plot(rows, f"{args.out}.png")
    print(table)
    print(f"wrote {args.out}.json, .md, .png")


if __name__ == "__main__":
    main()
