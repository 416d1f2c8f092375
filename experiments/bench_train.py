"""Benchmark: the training step and the data path of the pretraining network.

    python experiments/bench_train.py                     # paper + runlocal, 96 and 227 px
    python experiments/bench_train.py --configs configs/pretrain.py --resolutions 227 --batch 16
    python experiments/bench_train.py --dtype bfloat16    # mixed precision (accelerators)

Step rows (`kind: "step"`): each (config, resolution) runs in a fresh
subprocess (so peak memory is its own) and times the compiled train step
alone on a fixed device-resident batch: one D update and one G update on
`batch` synthetic + `batch` real images. `images_per_s` is batch / step
time (synthetic images, each paired with one real image, per second);
`model_flops_per_step` counts the convolutions and matrix products of the
plain network analytically (`mtssl.flops` under `cpu_ops.plain_ops()`: every
kernel tap, as per-layer formulas and the PyTorch model do),
`flops_per_step` those of the program that runs (the CPU rewrites leave out
taps that only read padding); `achieved_gflops` = model FLOPs x steps/s,
and `mfu` divides that by `matmul_peak_gflops`, measured here (best float32
matrix product of a few sizes, in the same process).

Pipeline rows (`kind: "pipeline"`, `--pipeline_steps` > 0): each config at
its own resolution (batch `--pipeline_batch`) runs the real training loop's data path (grain
iterator over the scene engine and the real images, as `mtssl.train`) and
step for that many steps, in two rounds alternating with the same step on
one fixed batch: `images_per_s` is the loop's, `step_alone_images_per_s` the
fixed batch's, `loop_over_step_alone` their ratio (1.0: the data path costs
nothing), `input_wait_share` the share of the loop's wall time spent in
`next()` (the step dispatched before it runs meanwhile, so this is an upper
bound on idle time), `host_ms_per_batch` the median host time of each
data-path stage alone (render, real crops, preprocess: on 2 cores the step
and these take turns on the same cores, so the loop is about their sum),
`renderer_images_per_s` the scene engine alone at the config's settings.

Prints a line per row and writes a JSON list of rows with at least `config`,
`resolution`, `batch`, `images_per_s`, `peak_rss_mb` and the machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
import time

import jax
import numpy as np
from _common import load_config, machine, machine_label, peak_rss_mb, write_rows

from mtssl import steps, train
from mtssl.data import pipeline
from mtssl.data.sources import training_sources
from mtssl.flops import count_flops
from mtssl.loop import release_free_host_memory
from mtssl.mesh import data_mesh, local_to_global
from mtssl.models.cpu_ops import plain_ops

# --pipeline_rendering -> synthetic.on_device of each pipeline row
RENDERING = {"host": (False,), "device": (True,), "both": (False, True)}


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


def matmul_peak_gflops(dtype: str = "float32", repeats: int = 5) -> float:
    """Best matrix-product rate of this device in `dtype`, GFLOP/s: the MFU
    denominator, so a bfloat16 step is held against the bfloat16 peak. Random
    operands (accelerators run products of constants faster) and, off the
    CPU, sizes large enough that a launch's overhead does not count."""
    sizes = (1024, 2048, 3072) if jax.default_backend() == "cpu" else (4096, 8192)
    best = 0.0
    for n in sizes:
        a = jax.random.normal(jax.random.key(n), (n, n), dtype)
        f = jax.jit(lambda a: a @ a)
        f(a).block_until_ready()
        for _ in range(repeats):
            start = time.perf_counter()
            f(a).block_until_ready()
            best = max(best, 2 * n ** 3 / (time.perf_counter() - start) / 1e9)
    return best


def device_peak_memory_mb() -> float | None:
    """Peak memory of device 0 in MB where its backend reports it (GPU, TPU);
    on CPU the process's peak RSS is the figure (`peak_rss_mb`)."""
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**20


def bench_one(config_spec: str, resolution: int, batch: int, repeats: int,
              dtype: str) -> dict:
    config = load_config(config_spec)
    config.model.dtype = dtype
    static, init = steps.create(config, resolution, jax.random.key(0))
    state = steps.initial_state(init, jax.random.key(0))
    train_step = functools.partial(steps.train_step, static=static)
    step = jax.jit(train_step, donate_argnums=0)
    data = fake_batch(batch, resolution)
    start = time.perf_counter()
    step = step.lower(state, data).compile()
    compile_s = time.perf_counter() - start
    release_free_host_memory()          # as mtssl.train does
    state, metrics = step(state, data)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        state, metrics = step(state, data)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    # The step's peak, read as bench_torch.py reads PyTorch's: before the FLOP
    # count's tracing and the matmul peak's products, which are not training.
    peak_rss, device_peak = peak_rss_mb(), device_peak_memory_mb()
    median = statistics.median(times)
    abstract = jax.eval_shape(init, jax.random.key(0))
    flops = count_flops(train_step, abstract, data)
    with plain_ops():
        model_flops = count_flops(train_step, abstract, data)
    peak = matmul_peak_gflops(dtype)
    return {"kind": "step", "config": config_spec, "dtype": dtype,
            "resolution": resolution, "batch": batch,
            "images_per_s": batch / median, "steps_per_s": 1 / median,
            "best_images_per_s": batch / min(times), "compile_s": compile_s,
            "model_flops_per_step": model_flops, "flops_per_step": flops,
            "achieved_gflops": model_flops / median / 1e9,
            "matmul_peak_gflops": peak, "mfu": model_flops / median / 1e9 / peak,
            "peak_rss_mb": peak_rss, "device_peak_mb": device_peak,
            "repeats": repeats}


def _host_costs_ms(synthetic, real, config, repeats: int = 5) -> dict:
    """Median host milliseconds per batch of each data-path stage, one at a
    time (render, real-image crops, normalisation): what the loop's CPU time
    goes to besides the step."""
    b = config.batch_size

    def median_ms(fn):
        times = []
        for r in range(repeats):
            start = time.perf_counter()
            fn(r)
            times.append(time.perf_counter() - start)
        return 1e3 * statistics.median(times)
    costs = {}
    if hasattr(synthetic, "render_batch"):
        first = synthetic.render_batch(np.arange(b))               # compiles
        fresh = b // config.synthetic.reuse                        # records a batch renders
        costs["render"] = median_ms(
            lambda r: synthetic.render_batch(np.arange(fresh) + (r + 1) * b))
    else:
        first = pipeline._GatherBatch(synthetic).map(np.arange(b))
    syn = pipeline.CropSynthetic(config.image_size).random_map(first, np.random.default_rng(0))
    pair = (syn, None)
    if real is not None and not hasattr(real, "render_batch"):
        costs["real"] = median_ms(lambda r: [real[i] for i in range(r * b, (r + 1) * b)])
        pair = (syn, {"image": np.stack([real[i]["image"] for i in range(b)])})
    preprocess = pipeline.Preprocess(config.data.grayscale)
    costs["preprocess"] = median_ms(
        lambda r: preprocess.random_map(pair, np.random.default_rng(r)))
    return costs


def bench_pipeline(config_spec: str, n_steps: int, on_device: bool, batch: int,
                   dtype: str, reuse: int = 0, rounds: int = 2) -> dict:
    """The training loop's data path + step, as `mtssl.train` runs them, in
    alternating rounds with the same step on one fixed batch (dispatched the
    same way, so the two differ only in where the batches come from)."""
    config = load_config(config_spec)
    config.synthetic.on_device = on_device
    config.batch_size = batch or config.batch_size
    config.model.dtype = dtype
    config.synthetic.reuse = reuse or config.synthetic.reuse
    synthetic, real = training_sources(config)
    costs = {} if on_device else _host_costs_ms(synthetic, real, config)
    data_iter = train.data_iterator(config, synthetic, real)
    static, init = steps.create(config, config.image_size, jax.random.key(0))
    static = train.with_device_rendering(static, config, synthetic)
    mesh = data_mesh()
    step, state_sharding, data_sharding = steps.compile_step(
        static, mesh, jax.eval_shape(init, jax.random.key(0)))
    state = steps.initial_state(init, jax.random.key(0), state_sharding)
    # Compile; fill the prefetch buffer; pass the first batches, which render
    # every record when records are reused.
    for _ in range(2 + (config.synthetic.reuse - 1) * pipeline.REUSE_DELAY):
        fixed = local_to_global(next(data_iter), data_sharding)
        state, metrics = step(state, fixed)
    jax.block_until_ready(metrics)
    loop_s = alone_s = wait = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n_steps):
            state, metrics = step(state, fixed)
        jax.block_until_ready(metrics)
        alone_s += time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(n_steps):
            t0 = time.perf_counter()
            batch = next(data_iter)
            wait += time.perf_counter() - t0
            state, metrics = step(state, local_to_global(batch, data_sharding))
        jax.block_until_ready(metrics)
        loop_s += time.perf_counter() - start
    images = rounds * n_steps * config.batch_size
    return {"kind": "pipeline", "config": config_spec, "on_device": on_device, "dtype": dtype,
            "resolution": config.image_size,
            "batch": config.batch_size, "reuse": config.synthetic.reuse,
            "steps": rounds * n_steps,
            "images_per_s": images / loop_s,
            "step_alone_images_per_s": images / alone_s,
            "loop_over_step_alone": alone_s / loop_s,
            "input_wait_share": wait / loop_s,
            "host_ms_per_batch": costs,
            "renderer_images_per_s": (config.batch_size / costs["render"] * 1e3
                                      if "render" in costs else None),
            "render_resolution": config.synthetic.render.resolution,
            "peak_rss_mb": peak_rss_mb(), "device_peak_mb": device_peak_memory_mb()}


def _subprocess_row(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                          check=False)
    if proc.returncode:
        raise RuntimeError(f"{args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+",
                        default=["configs/pretrain.py", "configs/pretrain.py:runlocal"])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[96, 227])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--pipeline_steps", type=int, default=0,
                        help="> 0: also time the data path + step of each config")
    parser.add_argument("--pipeline_batch", type=int, default=16,
                        help="batch of the pipeline rows (0: the config's own)")
    parser.add_argument("--pipeline_rendering", choices=RENDERING, default="host",
                        help="where the pipeline rows render: host (grain), device "
                             "(synthetic.on_device=True) or both, one row each")
    parser.add_argument("--pipeline_reuse", type=int, default=0,
                        help="synthetic.reuse of the pipeline rows (0: the config's own)")
    parser.add_argument("--out", default="experiments/results/bench_train.json")
    parser.add_argument("--one", nargs=2, metavar=("CONFIG", "RESOLUTION"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--one_pipeline", metavar="CONFIG", help=argparse.SUPPRESS)
    parser.add_argument("--on_device", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(bench_one(args.one[0], int(args.one[1]), args.batch,
                                   args.repeats, args.dtype)))
        return
    if args.one_pipeline:
        print(json.dumps(bench_pipeline(args.one_pipeline, args.pipeline_steps,
                                        args.on_device, args.pipeline_batch, args.dtype,
                                        args.pipeline_reuse)))
        return

    info = machine()
    label = machine_label(info)
    print(f"machine: {info}")
    rows = []
    for config in args.configs:
        for res in args.resolutions:
            row = _subprocess_row(["--one", config, str(res), "--batch", str(args.batch),
                                   "--repeats", str(args.repeats), "--dtype", args.dtype])
            rows.append(row | {"machine": info})
            print(f"{config:>30s} {res:4d} px batch {args.batch}+{args.batch} "
                  f"{args.dtype}: {row['images_per_s']:7.1f} img/s "
                  f"({row['steps_per_s']:.2f} steps/s), "
                  f"{row['model_flops_per_step'] / 1e9:.0f} model GFLOP/step "
                  f"({row['flops_per_step'] / 1e9:.0f} executed), "
                  f"{row['achieved_gflops']:.0f} GFLOP/s = {100 * row['mfu']:.0f}% of "
                  f"matmul peak {row['matmul_peak_gflops']:.0f}, "
                  f"compile {row['compile_s']:.1f} s, peak RSS {row['peak_rss_mb']:.0f} MB "
                  f"[{label}]", flush=True)
        for on_device in RENDERING[args.pipeline_rendering]:
            if args.pipeline_steps <= 0:
                break
            row = _subprocess_row(["--one_pipeline", config, "--pipeline_steps",
                                   str(args.pipeline_steps), "--pipeline_batch",
                                   str(args.pipeline_batch), "--dtype", args.dtype,
                                   "--pipeline_reuse", str(args.pipeline_reuse)]
                                  + (["--on_device"] if on_device else []))
            rows.append(row | {"machine": info})
            print(f"{config:>30s} {row['resolution']:4d} px batch {row['batch']} "
                  f"pipeline{' (on device)' if on_device else ''}, reuse {row['reuse']}: "
                  f"{row['images_per_s']:7.1f} img/s end to end = "
                  f"{row['loop_over_step_alone']:.2f}x the step alone "
                  f"({row['step_alone_images_per_s']:.1f}), input wait "
                  f"{100 * row['input_wait_share']:.1f}%"
                  + "".join(f", host {k} {v:.1f} ms/batch"
                            for k, v in row["host_ms_per_batch"].items())
                  + f" [{label}]", flush=True)
    write_rows(rows, args.out)


if __name__ == "__main__":
    main()
