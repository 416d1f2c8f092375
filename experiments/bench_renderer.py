"""Benchmark: rendered images per second of the procedural scene engine.

    python experiments/bench_renderer.py                       # 64, 128, 227 px
    python experiments/bench_renderer.py --resolutions 128 --batches 8 32
    python experiments/bench_renderer.py --out experiments/results/renderer.json
    python experiments/bench_renderer.py --resolutions 104 --batches 16 --cache /tmp/cache
    python experiments/bench_renderer.py --resolutions 104 256 --batches 16 --variants --tiles 24 32 40 64

Prints one line per (resolution, batch) and writes a JSON list of rows with
`config`, `resolution`, `batch`, `images_per_s`, `compile_s`, `peak_rss_mb`
and the machine. Timing: one warm-up call per setting (compilation), then
`--repeats` rounds on fresh record indices, each round rendering the same
records with every setting in turn (side by side, so the machine's drifts fall
on all alike); images/s uses the median call. With --cache, the default is
timed twice more through a render cache in that (empty) folder: first on fresh
indices (render + store: "cache miss"), then on the same indices again (read
back: "cache hit"). --variants times each stage away in turn (antialiasing,
shadows, sensor effects, all three: what is left is ray casting and shading)
and adds a row for sampling the scenes alone; --tiles times the same renders
with other ray tiles (`RenderConfig.tile`, which changes no bit of the
output).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np
from _common import machine, machine_label, peak_rss_mb, write_rows

from mtssl.data import SyntheticScenes, scenes, synthetic


def _first_call_s(call, batch: int) -> float:
    """Seconds of `call`'s first call (compilation) on records 0..batch-1."""
    start = time.perf_counter()
    call(np.arange(batch, dtype=np.uint32))
    return time.perf_counter() - start


def _rounds(calls: list, batch: int, repeats: int) -> list[list[float]]:
    """Seconds per call of each of `calls` (functions of record indices), in
    `repeats` rounds over fresh records, each round calling every one of them
    on the same records in turn: side by side, so drifts in the machine's
    speed (+-15% on a shared 2-core machine) fall on all of them alike."""
    times = [[] for _ in calls]
    for r in range(repeats):
        idx = np.arange(batch, dtype=np.uint32) + (r + 1) * batch
        for call, spent in zip(calls, times):
            start = time.perf_counter()
            call(idx)
            spent.append(time.perf_counter() - start)
    return times


def _row(label: str, resolution: int, batch: int, times: list[float],
         compile_s: float) -> dict:
    return {"config": label, "resolution": resolution, "batch": batch,
            "images_per_s": batch / statistics.median(times),
            "best_images_per_s": batch / min(times),
            "compile_s": compile_s, "peak_rss_mb": peak_rss_mb()}


def _label(source_kwargs: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(source_kwargs.items())
                    if k != "cache_dir") or "default"


def bench_side_by_side(resolution: int, batch: int, repeats: int,
                       variants: list[dict]) -> list[dict]:
    """One row per variant, all timed in the same rounds (`_rounds`)."""
    # render_batch returns numpy: the times include device->host copies.
    calls = [SyntheticScenes(resolution=resolution, seed=0, **kw).render_batch
             for kw in variants]
    compile_s = [_first_call_s(call, batch) for call in calls]
    times = _rounds(calls, batch, repeats)
    return [_row(_label(kw), resolution, batch, spent, seconds)
            for kw, seconds, spent in zip(variants, compile_s, times)]


def bench_cache(resolution: int, batch: int, repeats: int, cache_pass: str,
                cache_dir: str) -> dict:
    """A render cache in an empty folder: "miss" times fresh records
    (render + store), "hit" the same records again (read back)."""
    call = SyntheticScenes(resolution=resolution, seed=0, cache_dir=cache_dir).render_batch
    compile_s = _first_call_s(call, batch)
    times = _rounds([call], batch, repeats)[0]
    if cache_pass == "hit":           # the same indices again, now stored
        times = _rounds([call], batch, repeats)[0]
    return _row(f"default (cache {cache_pass})", resolution, batch, times, compile_s)


def bench_scene_sampling(batch: int, repeats: int) -> dict:
    """Scene sampling alone, as the renderer does it (one scene after another
    in one call, one thread)."""
    config = scenes.SceneConfig()

    @jax.jit
    def sample(indices):
        return jax.lax.map(lambda i: scenes.sample_scene(
            synthetic.record_keys(np.uint32(0), i)[0], config), indices)

    def call(indices):
        jax.block_until_ready(sample(indices))

    compile_s = _first_call_s(call, batch)
    times = _rounds([call], batch, repeats)[0]
    return _row("scene sampling only (one thread)", 0, batch, times, compile_s)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 128, 227])
    parser.add_argument("--batches", type=int, nargs="+", default=[32])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", action="store_true",
                        help="also time with each stage off, and scene sampling alone")
    parser.add_argument("--tiles", type=int, nargs="*", default=[],
                        help="also time the default renders with these ray tiles")
    parser.add_argument("--cache", default="",
                        help="an empty folder: also time render cache misses and hits")
    parser.add_argument("--out", default="experiments/results/bench_renderer.json")
    args = parser.parse_args()

    variants = [{}] + [{"tile": tile} for tile in args.tiles]
    if args.variants:
        variants += [{"aa_samples": 0}, {"shadows": False}, {"sensor_effects": False},
                     {"aa_samples": 0, "shadows": False, "sensor_effects": False}]
    info = machine()
    print(f"machine: {info}")
    rows = []
    for res in args.resolutions:
        for b in args.batches:
            new = bench_side_by_side(res, b, args.repeats, variants)
            if args.cache:
                new += [bench_cache(res, b, args.repeats, p, f"{args.cache}/{res}_{b}_{p}")
                        for p in ("miss", "hit")]
            for row in new:
                row["machine"] = info
                rows.append(row)
                print(f"{row['config']:>28s} {res:4d} px  batch {b:3d}: "
                      f"{row['images_per_s']:8.1f} img/s (best "
                      f"{row['best_images_per_s']:.1f}), compile "
                      f"{row['compile_s']:.1f} s, peak RSS {row['peak_rss_mb']:.0f} MB "
                      f"[{machine_label(info)}]", flush=True)
    if args.variants:
        for b in args.batches:
            row = bench_scene_sampling(b, args.repeats) | {"machine": info}
            rows.append(row)
            print(f"{row['config']:>28s}        batch {b:3d}: {row['images_per_s']:8.1f} "
                  f"scenes/s [{machine_label(info)}]", flush=True)
    write_rows(rows, args.out)


if __name__ == "__main__":
    main()
