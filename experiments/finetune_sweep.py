"""Fine-tuning transfer with the learning rate chosen per encoder on a validation split.

    python experiments/finetune_sweep.py            # random init vs runlocal, seeds 0-2
    python experiments/finetune_sweep.py --seeds=0 --lrs=0.001,0.01 \\
        --encoders=random,runlocal=runs/local

Every encoder fine-tunes twice per (seed, learning rate) of one grid with
`configs/finetune.py:photos` (every other setting as the preset says): a
selection run trained on the "fit" split (the top 60% of each training
photograph's region) and scored on "val" (its bottom 40%, pixels the run
never trained on), and the final run trained on the whole "train" split and
scored on test. Per (encoder, seed) the learning rate with the best
validation accuracy is chosen, and that final run's test accuracy is what
the table reports: the usual transfer protocol (e.g. Kornblith et al. 2019:
choose on a split held out of the training data, then train on all of it),
which gives every encoder the learning rate that suits it without looking at
the test split. A single learning rate for all would favour whichever
encoder it happens to suit: a random init wants a smaller one than a
pretrained network, whose features must move further from what pretraining
made them.

`--encoders`: "random" (runlocal's architecture, the same seed) and
name=checkpoint pairs, where "{seed}" in the checkpoint path is replaced by the
seed (default: the scale-curve runs, runs/curve_nogray/seed{seed}/run/
checkpoints/1200, the README main command's 1,200 steps at seeds 0-2).

Runs are resumable (a finished fine-tuning workdir is read, not rerun). Runs go
to `<runs>/<encoder>/seed<k>/lr<lr>` and selection runs to
`<runs>/<encoder>/seed<k>/select_lr<lr>` (default runs/finetune_sweep); results to
`<out>.json` (every run, with its command and the machine) and `<out>.md`.
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
from _common import ROOT, machine, machine_label, printable, result_of, spread_cell

DEFAULT_ENCODERS = "random,runlocal=runs/curve_nogray/seed{seed}/run/checkpoints/1200"
SELECTION = ["--config.train_split=fit", "--config.val_split=val"]


def finetune_command(workdir: pathlib.Path, checkpoint: str, seed: int, lr: float,
                     extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "mtssl.eval.finetune", "--config=configs/finetune.py:photos",
            f"--workdir={workdir}", f"--config.checkpoint={checkpoint}",
            f"--config.seed={seed}", f"--config.learning_rate={lr:g}", *extra]


def parse_encoders(spec: str) -> dict[str, str]:
    """"random,name=path{seed}" -> {"random": "", "name": "path{seed}"}."""
    encoders = {}
    for item in filter(None, spec.split(",")):
        name, _, path = item.partition("=")
        if name != "random" and not path:
            raise ValueError(f"encoder {item!r}: give name=checkpoint (or 'random')")
        encoders[name] = path
    return encoders


def select(runs: list[dict]) -> dict[tuple[str, int], dict]:
    """Per (encoder, seed): the run with the best validation accuracy (ties:
    the smaller learning rate)."""
    chosen: dict[tuple[str, int], dict] = {}
    for r in sorted(runs, key=lambda r: r["lr"]):
        key = (r["encoder"], r["seed"])
        if key not in chosen or r["val_accuracy"] > chosen[key]["val_accuracy"]:
            chosen[key] = r
    return chosen


def markdown(runs: list[dict], info: dict) -> str:
    encoders = list(dict.fromkeys(r["encoder"] for r in runs))
    lrs = sorted({r["lr"] for r in runs})
    seeds = sorted({r["seed"] for r in runs})
    chosen = select(runs)
    lines = [f"Fine-tuning on the photos task ({info['date']}, {machine_label(info['machine'])}, "
             f"jax {info['machine']['jax']}): `configs/finetune.py:photos`, seeds "
             f"{', '.join(map(str, seeds))}; test top-1 % (mean ± half-range over seeds).", "",
             "| encoder | " + " | ".join(f"lr {lr:g}" for lr in lrs)
             + " | lr chosen on val (per seed) | test at the chosen lr | "
             + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---" * (3 + len(lrs) + len(seeds)) + "|"]
    for name in encoders:
        cells = [spread_cell([r["accuracy"] for r in runs
                              if r["encoder"] == name and r["lr"] == lr], 100, 1) for lr in lrs]
        picked = [chosen[(name, s)] for s in seeds if (name, s) in chosen]
        cells.append(", ".join(f"{r['lr']:g}" for r in picked))
        cells.append(spread_cell([r["accuracy"] for r in picked], 100, 1))
        cells += [f"{100 * r['accuracy']:.1f}" for r in picked]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if "random" in encoders:
        for name in encoders:
            if name == "random":
                continue
            gaps = [chosen[(name, s)]["accuracy"] - chosen[("random", s)]["accuracy"]
                    for s in seeds if (name, s) in chosen and ("random", s) in chosen]
            if gaps:
                lines += ["", f"{name} minus random init at the chosen lr (same seed): "
                          + ", ".join(f"{100 * g:+.1f}" for g in gaps)
                          + f"; mean {100 * np.mean(gaps):+.1f}."]
    lines += ["", "Validation accuracy % of the selection runs (trained on \"fit\", scored on "
              "\"val\"), mean ± half-range over seeds:", "",
              "| encoder | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |",
              "|---" * (1 + len(lrs)) + "|"]
    for name in encoders:
        lines.append(f"| {name} | " + " | ".join(
            spread_cell([r["val_accuracy"] for r in runs
                         if r["encoder"] == name and r["lr"] == lr], 100, 1) for lr in lrs) + " |")
    lines += ["", "Commands (seed 0, each lr: the selection run, then the final run):", "", "```"]
    for r in runs:
        if r["seed"] == seeds[0]:
            lines += [r["selection_command"], r["command"]]
    lines += ["```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoders", default=DEFAULT_ENCODERS,
                        help="'random' and name=checkpoint ({seed} is replaced)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--lrs", default="0.001,0.01", help="the learning-rate grid")
    parser.add_argument("--runs", default="runs/finetune_sweep")
    parser.add_argument("--out", default="experiments/results/finetune_sweep")
    parser.add_argument("--extra", default="", help="more --config.x=y overrides, "
                        "space-separated, for every run")
    args = parser.parse_args()
    encoders = parse_encoders(args.encoders)
    seeds = [int(s) for s in args.seeds.split(",")]
    lrs = [float(x) for x in args.lrs.split(",")]
    os.chdir(ROOT)                 # relative paths in the recorded commands
    out, root = pathlib.Path(args.out), pathlib.Path(args.runs)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = []
    for seed in seeds:
        for name, pattern in encoders.items():
            for lr in lrs:
                base, checkpoint = root / name / f"seed{seed}", pattern.format(seed=seed)
                selection = finetune_command(base / f"select_lr{lr:g}", checkpoint, seed, lr,
                                             args.extra.split() + SELECTION)
                final = finetune_command(base / f"lr{lr:g}", checkpoint, seed, lr,
                                         args.extra.split())
                chosen_by = result_of(selection, base / f"select_lr{lr:g}", "finetune.json")
                result = result_of(final, base / f"lr{lr:g}", "finetune.json")
                runs.append({"encoder": name, "seed": seed, "lr": lr,
                             "accuracy": result["accuracy"],
                             "val_accuracy": chosen_by["val_accuracy"],
                             "selection_test_accuracy": chosen_by["accuracy"],
                             "command": printable(final),
                             "selection_command": printable(selection)})
                print(f"{name} seed {seed} lr {lr:g}: val {100 * chosen_by['val_accuracy']:.1f} "
                      f"(test {100 * chosen_by['accuracy']:.1f} trained on fit), "
                      f"test {100 * result['accuracy']:.1f}", flush=True)
                info = {"date": datetime.date.today().isoformat(), "machine": machine()}
                out.with_suffix(".json").write_text(json.dumps({**info, "runs": runs},
                                                               indent=1))
                out.with_suffix(".md").write_text(markdown(runs, info))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
