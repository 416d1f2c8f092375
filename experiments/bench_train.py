"""Benchmark: training steps per second of the pretraining network.

    python experiments/bench_train.py                     # paper + runlocal, 96 and 227 px
    python experiments/bench_train.py --configs configs/pretrain.py --resolutions 227 --batch 16

Each (config, resolution) runs in a fresh subprocess (so peak memory is its
own) and times the compiled train step alone on a fixed device-resident
batch: one D update and one G update on `batch` synthetic + `batch` real
images. `images_per_s` is batch / step time, i.e. synthetic images (each
paired with one real image) per second. Prints a line per row and writes a
JSON list of rows with `config`, `resolution`, `batch`, `images_per_s`,
`steps_per_s`, `compile_s`, `peak_rss_mb` and the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import jax
import numpy as np
from _common import load_config, machine, peak_rss_mb, write_rows

from mtssl import steps


def fake_batch(batch: int, size: int) -> dict:
    rng = np.random.default_rng(0)
    normals = rng.normal(size=(batch, size, size, 3)).astype(np.float32)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    return jax.device_put({
        "synthetic": {"image": rng.normal(size=(batch, size, size, 3)).astype(np.float32),
                      "depth": rng.uniform(0.5, 8, (batch, size, size)).astype(np.float32),
                      "normals": normals,
                      "contours": rng.uniform(size=(batch, size, size)) < 0.1},
        "real": {"image": rng.normal(size=(batch, size, size, 3)).astype(np.float32)}})


def bench_one(config_spec: str, resolution: int, batch: int, repeats: int) -> dict:
    config = load_config(config_spec)
    static, init = steps.create(config, resolution, jax.random.key(0))
    state = jax.jit(init)(jax.random.key(0))
    step = jax.jit(lambda s, b: steps.train_step(s, b, static=static), donate_argnums=0)
    data = fake_batch(batch, resolution)
    start = time.perf_counter()
    state, metrics = step(state, data)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        state, metrics = step(state, data)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"config": config_spec, "resolution": resolution, "batch": batch,
            "images_per_s": batch / median, "steps_per_s": 1 / median,
            "best_images_per_s": batch / min(times), "compile_s": compile_s,
            "peak_rss_mb": peak_rss_mb(), "repeats": repeats}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+",
                        default=["configs/pretrain.py", "configs/pretrain.py:runlocal"])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[96, 227])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="experiments/results/bench_train.json")
    parser.add_argument("--one", nargs=2, metavar=("CONFIG", "RESOLUTION"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(bench_one(args.one[0], int(args.one[1]), args.batch,
                                   args.repeats)))
        return

    info = machine()
    print(f"machine: {info}")
    rows = []
    for config in args.configs:
        for res in args.resolutions:
            proc = subprocess.run(
                [sys.executable, __file__, "--one", config, str(res), "--batch",
                 str(args.batch), "--repeats", str(args.repeats)],
                capture_output=True, text=True, check=True)
            row = json.loads(proc.stdout.strip().splitlines()[-1]) | {"machine": info}
            rows.append(row)
            print(f"{config:>30s} {res:4d} px batch {args.batch}+{args.batch}: "
                  f"{row['images_per_s']:7.1f} img/s ({row['steps_per_s']:.2f} steps/s), "
                  f"compile {row['compile_s']:.1f} s, peak RSS {row['peak_rss_mb']:.0f} MB",
                  flush=True)
    write_rows(rows, args.out)


if __name__ == "__main__":
    main()
