"""The paper's ablations at a CPU-feasible scale, as one markdown table.

    python experiments/ablations.py                      # all variants, seeds 0, 1, 2
    python experiments/ablations.py --seeds=0 --steps=200 --variants=all3,all3+da

Each (variant, seed) is two commands, run as subprocesses and recorded
verbatim in the output:

  1. pretraining: `python -m mtssl.main --config=configs/pretrain.py:runlocal`
     with the variant's overrides, `--config.num_steps=STEPS` and the
     procedural target domain as the "real" domain (`real.source=target`),
     so DA has a domain whose labels exist but are never trained on;
  2. a linear probe on the embedded photos task:
     `python -m mtssl.eval.linear_probe --config=configs/linear_probe.py`.

Measured per run: probe test accuracy conv1..conv5 on the photos task;
dense errors at the last step on held-out scenes of the training domain
(`eval/...`) and of the target domain (`eval_target/...`, the direct measure
of what domain adaptation is for). A random-init encoder of the same
architecture is probed once per seed as the baseline row.

Runs are resumable: a finished (variant, seed) (its row.json exists) is read,
not rerun. Runs and probes go to `<runs>/<variant>/seed<k>/{run,probe}`
(default runs/ablations, not committed); the results to `<out>.json` (one row
per run, with its commands and the machine) and `<out>.md` (mean +- spread
over seeds, where spread = half the max-min range).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import sys


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import ROOT, machine, printable, run_logged, spread_cell

# name -> (what it tests, overrides on top of configs/pretrain.py:runlocal)
VARIANTS = {
    "depth": ("depth only, no DA", ["--config.model.tasks=depth", "--config.da.enabled=False"]),
    "normals": ("normals only, no DA",
                ["--config.model.tasks=normals", "--config.da.enabled=False"]),
    "contours": ("contours only, no DA",
                 ["--config.model.tasks=contours", "--config.da.enabled=False"]),
    "all3": ("depth+normals+contours, no DA", ["--config.da.enabled=False"]),
    "all3+da": ("all three + DA at conv5 (the paper)", []),
    "all3+da+adv0.5": ("all three + DA at conv5, adversarial weight 0.5 (D held near chance)",
                       ["--config.loss.weights.adversarial=0.5"]),
    "all3+da@conv4": ("all three + DA at conv4", ["--config.model.adapt_layer=conv4"]),
    "all3+da@conv3": ("all three + DA at conv3", ["--config.model.adapt_layer=conv3"]),
    "all3+da+gray": ("the paper with its grayscale trick (runlocal has it off)",
                     ["--config.data.grayscale=True"]),
    "semantics": ("semantic classes only, no DA",
                  ["--config.model.tasks=semantics", "--config.da.enabled=False"]),
    "all4": ("all three + semantics, no DA",
             ["--config.model.tasks=depth,normals,contours,semantics",
              "--config.da.enabled=False"]),
    "all4+da": ("all three + semantics + DA at conv5",
                ["--config.model.tasks=depth,normals,contours,semantics"]),
}
LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")
DENSE = (("depth/abs_rel", "depth abs-rel", 3), ("normals/mean_deg", "normals mean deg", 1),
         ("contours/f", "contour F", 3), ("semantics/miou", "semantic mIoU", 3))


def pretrain_command(run_dir: pathlib.Path, overrides: list[str], seed: int,
                     steps: int, render_cache: str = "") -> list[str]:
    return [sys.executable, "-m", "mtssl.main", "--config=configs/pretrain.py:runlocal",
            f"--workdir={run_dir}", *overrides, "--config.real.source=target",
            f"--config.synthetic.render.cache_dir={render_cache}",
            f"--config.seed={seed}", f"--config.num_steps={steps}",
            f"--config.eval.every_steps={steps}", "--config.eval.num_images=128",
            "--config.log.images_every_steps=0", f"--config.checkpoint.every_steps={steps}"]


def probe_command(probe_dir: pathlib.Path, checkpoint: str, seed: int) -> list[str]:
    command = [sys.executable, "-m", "mtssl.eval.linear_probe",
               "--config=configs/linear_probe.py", f"--workdir={probe_dir}",
               f"--config.checkpoint={checkpoint}", f"--config.seed={seed}"]
    if not checkpoint:   # the baseline: runlocal's architecture at its resolution
        command += ["--config.model.width=0.25", "--config.image_size=96"]
    return command


def final_eval(run_dir: pathlib.Path) -> dict[str, float]:
    """eval/... and eval_target/... of the last logged step that has them."""
    last = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if any(k.startswith("eval") for k in row):
            last = {k: v for k, v in row.items() if k.startswith("eval")}
    return last


def run_one(runs: pathlib.Path, variant: str, seed: int, steps: int,
            render_cache: str = "") -> dict:
    base = runs / variant / f"seed{seed}"
    run_dir, probe_dir = base / "run", base / "probe"
    row_file = base / "row.json"
    if row_file.exists():
        return json.loads(row_file.read_text())
    commands, seconds = [], 0.0
    if variant == "random":
        probe = probe_command(probe_dir, "", seed)
        seconds += run_logged(probe, base / "probe.log")
        commands.append(probe)
        dense = {}
    else:
        pretrain = pretrain_command(run_dir, VARIANTS[variant][1], seed, steps, render_cache)
        seconds += run_logged(pretrain, base / "pretrain.log")
        probe = probe_command(probe_dir, str(run_dir), seed)
        seconds += run_logged(probe, base / "probe.log")
        commands += [pretrain, probe]
        dense = final_eval(run_dir)
    probe_result = json.loads((probe_dir / "probe.json").read_text())
    row = {"variant": variant, "seed": seed, "steps": steps, "seconds": seconds,
           "probe": {k: v["accuracy"] for k, v in probe_result.items()}, "dense": dense,
           "commands": [printable(cmd) for cmd in commands]}
    row_file.write_text(json.dumps(row, indent=1))
    return row


def best_layer(row: dict) -> float:
    """A run's photos probe accuracy at its best layer."""
    return max(row["probe"][layer] for layer in LAYERS)


def markdown(rows: list[dict], steps: int, seeds: list[int], info: dict) -> str:
    variants = ["random", *[v for v in VARIANTS if any(r["variant"] == v for r in rows)]]
    by_variant = {v: [r for r in rows if r["variant"] == v] for v in variants}
    lines = [
        (f"Ablations at CPU scale ({info['date']}, {info['machine']['processor']}, "
        f"{info['machine']['cpu_count']} cores, jax {info['machine']['jax']}): "
        f"runlocal network (AlexNet-BN width 0.25, 96 px, batch 16+16), {steps} steps, "
        f"real domain = procedural target; seeds {', '.join(map(str, seeds))}; "
         "mean ± half-range over seeds."),
        "",
        "| variant | n | photos probe acc % conv1 | conv2 | conv3 | conv4 | conv5 | "
        "best layer - random init's (same seed) | "
        + " | ".join(f"synthetic {name}" for _, name, _ in DENSE) + " | "
        + " | ".join(f"target {name}" for _, name, _ in DENSE) + " |",
        "|---" * (8 + 2 * len(DENSE)) + "|",
    ]
    random_best = {r["seed"]: best_layer(r) for r in by_variant["random"]}
    for v in variants:
        rs = by_variant[v]
        if not rs:
            continue
        cells = [spread_cell([r["probe"][layer] for r in rs], 100, 1) for layer in LAYERS]
        cells.append(spread_cell([best_layer(r) - random_best[r["seed"]] for r in rs
                                  if r["seed"] in random_best], 100, 1, signed=True))
        for prefix in ("eval/", "eval_target/"):
            for key, _, digits in DENSE:
                cells.append(spread_cell([r["dense"][prefix + key] for r in rs
                                    if prefix + key in r["dense"]], 1, digits))
        label = "random init (no training)" if v == "random" else f"{v}: {VARIANTS[v][0]}"
        lines.append(f"| {label} | {len(rs)} | " + " | ".join(cells) + " |")
    lines += ["", "Commands (seed 0; other seeds change `--config.seed`):", "", "```"]
    for v in variants:
        rs = sorted(by_variant[v], key=lambda r: r["seed"])
        if rs:
            lines += rs[0]["commands"]
    lines += ["```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="experiments/results/ablations",
                        help="results as <out>.json and <out>.md")
    parser.add_argument("--runs", default="runs/ablations", help="run and probe folders")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--render_cache", default="runs/render_cache",
                        help="render cache shared by every run (variants and seeds draw the "
                             "same scenes); '' = render every time")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated subset of: {', '.join(VARIANTS)}")
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; valid: {', '.join(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    os.chdir(ROOT)                 # relative paths in the recorded commands
    out, runs = pathlib.Path(args.out), pathlib.Path(args.runs)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in seeds:                       # every variant once before any repeats
        for variant in ["random", *variants]:
            rows.append(run_one(runs, variant, seed, args.steps, args.render_cache))
            r = rows[-1]
            print(f"{variant} seed {seed}: probe "
                  + " ".join(f"{k} {100 * a:.1f}" for k, a in r["probe"].items())
                  + f" ({r['seconds']:.0f} s)", flush=True)
            info = {"date": datetime.date.today().isoformat(), "machine": machine()}
            out.with_suffix(".json").write_text(json.dumps(
                {**info, "steps": args.steps, "rows": rows}, indent=1))
            out.with_suffix(".md").write_text(markdown(rows, args.steps, seeds, info))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
