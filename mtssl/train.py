"""The pretraining loop: data, mesh, compiled step, checkpoints, logs.

`train_and_evaluate(config, workdir)` runs (or resumes) one pretraining run:

  * validates the config before anything is built or compiled;
  * lays a 1-D ('data',) mesh over every device of every process; each
    process reads its own slice of both domains and the global batch is
    assembled with `jax.make_array_from_process_local_data`;
  * restores the newest checkpoint in `<workdir>/checkpoints` (state and the
    data iterator position) or initialises a fresh state;
  * runs the jitted step (state donated); metrics stay on device until a
    log step, where they are fetched once, averaged, checked for NaN/inf,
    printed, and written to `metrics.jsonl` and TensorBoard;
  * every `log.images_every_steps` draws predictions for a fixed set of
    held-out synthetic scenes and real photos into a PNG grid, and every
    `eval.every_steps` computes dense metrics on held-out scenes
    (`mtssl.evaluate`);
  * saves a checkpoint every `checkpoint.every_steps` and at the end, each
    only after the metrics since the previous check were finite, so the
    newest checkpoint is always a good one. A non-finite loss stops the run
    with FloatingPointError naming the loss and the step.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import math
import signal
import threading
import time
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from mtssl import checkpointing, steps
from mtssl.config import validate
from mtssl.data import real as real_data
from mtssl.data import visualize
from mtssl.data.on_disk import SyntheticFolder
from mtssl.data.pipeline import make_train_dataset, normalize_images, render_on_device
from mtssl.data.synthetic import from_config as synthetic_from_config
from mtssl.evaluate import eval_sets, evaluate_sets, synthetic_batch, target_source
from mtssl.mesh import data_mesh, local_to_global, replicated, same_to_global
from mtssl.metric_writers import MetricWriter


def make_sources(config: ml_collections.ConfigDict):
    """(synthetic source, real source or None when DA is off)."""
    kind, arg = config.synthetic.source.partition(":")[::2]
    if kind == "render":
        synthetic = synthetic_from_config(config.synthetic.render)
    else:
        synthetic = SyntheticFolder(root=arg, resolution=config.image_size,
                                    depth_scale=config.synthetic.depth_scale)
    if not config.da.enabled:
        return synthetic, None
    kind, arg = config.real.source.partition(":")[::2]
    crop = config.real.crop
    if crop == "auto":
        crop = "random_crop" if kind == "package" else "resize"
    common = dict(resolution=config.image_size, seed=config.seed, crop=crop,
                  min_scale=config.real.min_scale)
    if kind == "target":
        real = target_source(config, held_out=False)
    elif kind == "package":
        real = real_data.PackagePhotos(**common)
    elif kind == "imagefolder":
        real = real_data.ImageFolder(root=arg, **common)
    else:
        real = real_data.TfdsImages(name=arg, split=config.real.split,
                                    data_dir=config.real.data_dir or None, **common)
    return synthetic, real


def preview_batch(config, held_out, real) -> dict[str, Any]:
    """A fixed set of held-out scenes and real photos to draw predictions
    for (rendered as one training-sized batch: that program is compiled
    anyway)."""
    n = config.log.num_images
    local_batch = max(n, config.batch_size // jax.process_count())
    syn = synthetic_batch(held_out, np.arange(local_batch), config.image_size)
    out = {"synthetic": {k: v[:n] for k, v in syn.items()}}
    if hasattr(real, "render_batch"):           # the procedural target domain
        out["real"] = {"image": real.render_batch(np.arange(local_batch))["image"][:n]}
    elif real is not None:
        out["real"] = {"image": np.stack([real[i]["image"] for i in range(n)])}
    return out


def _prediction_tiles(pred: dict[str, np.ndarray], i: int, truth=None) -> list[np.ndarray]:
    tiles = []
    if "depth" in pred:
        if truth is not None:
            valid = truth["depth"][i] > 0
            log_true = np.log(np.where(valid, truth["depth"][i], 1.0))
            lo, hi = log_true[valid].min(initial=0.0), log_true[valid].max(initial=1.0)
            tiles += [visualize.colorize(np.where(valid, log_true, np.nan), lo, hi),
                      visualize.colorize(pred["depth"][i], lo, hi)]
        else:
            tiles.append(visualize.colorize(pred["depth"][i]))
    if "normals" in pred:
        if truth is not None:
            tiles.append(visualize.normals_rgb(truth["normals"][i]))
        tiles.append(visualize.normals_rgb(pred["normals"][i]))
    if "contours" in pred:
        if truth is not None:
            tiles.append(visualize.mask_rgb(truth["contours"][i]))
        prob = 1.0 / (1.0 + np.exp(-pred["contours"][i]))
        tiles.append(np.repeat((prob[..., None] * 255).astype(np.uint8), 3, -1))
    return tiles


def prediction_grid(previews: dict[str, Any], preds: dict[str, Any]) -> np.ndarray:
    """Rows: synthetic input | true, predicted depth | true, predicted normals |
    true, predicted contours; then real input | predicted maps."""
    rows = []
    syn = previews["synthetic"]
    for i in range(len(syn["image"])):
        rows.append([syn["image"][i]] + _prediction_tiles(preds["synthetic"], i, syn))
    if "real" in previews:
        for i in range(len(previews["real"]["image"])):
            rows.append([previews["real"]["image"][i]]
                        + _prediction_tiles(preds["real"], i))
    return visualize.grid(rows)


def _format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def console_line(step: int, total: int, metrics: dict[str, float], images_per_s: float,
                 eta_s: float) -> str:
    parts = [f"step {step:>{len(str(total))}}/{total} ({100 * step / total:3.0f}%)",
             f"loss {metrics['g_loss']:.4f}"]
    parts += [f"{k.removeprefix('loss/')} {v:.4f}" for k, v in metrics.items()
              if k.startswith("loss/")]
    if "d_loss" in metrics:
        parts.append(f"D {metrics['d_loss']:.3f} acc {metrics['d_accuracy']:.2f}")
    parts += [f"{images_per_s:.1f} img/s", f"ETA {_format_duration(eta_s)}"]
    return " | ".join(parts)


def mean_metrics(history: list[dict[str, Any]]) -> dict[str, float]:
    fetched = jax.device_get(history)
    return {k: float(np.mean([h[k] for h in fetched])) for k in fetched[0]}


def release_free_host_memory() -> None:
    """Returns freed heap memory to the operating system (glibc's
    malloc_trim; elsewhere nothing happens). Compiling the paper network's
    step leaves ~400 MB of freed compiler memory in the process, which would
    otherwise stay in its peak resident memory."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def check_finite(metrics: dict[str, float], step: int, last_good: int | None) -> None:
    bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
    if bad:
        where = (f"the last good checkpoint (step {last_good}) is kept"
                 if last_good is not None else "no checkpoint was written")
        raise FloatingPointError(
            f"non-finite {', '.join(bad)} in the steps up to {step}; stopping; {where}")


def num_train_steps(config, synthetic_len: int) -> tuple[int, int]:
    """(total steps, steps per epoch); an epoch is one pass over the
    synthetic source."""
    steps_per_epoch = max(1, synthetic_len // config.batch_size)
    if config.num_steps > 0:
        return int(config.num_steps), steps_per_epoch
    return max(1, math.ceil(config.num_epochs * steps_per_epoch)), steps_per_epoch


class Preempted(Exception):
    """The run stopped on a signal after saving checkpoint `step`."""

    def __init__(self, signum: int, step: int | None):
        super().__init__(f"stopped by {signal.Signals(signum).name}; checkpoint {step} "
                         "saved; run the same command to resume")
        self.signum, self.step = signum, step


class PreemptionGuard:
    """SIGTERM / SIGINT (preemption, Ctrl-C) -> save a checkpoint at the next
    step boundary and stop. In one process through our own handlers; across
    processes through JAX's preemption sync point, so every process stops at
    the same step (its own handlers catch the signal)."""

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:     # a second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum
        logging.warning("%s received: saving a checkpoint after this step",
                        signal.Signals(signum).name)

    def requested(self, step: int) -> bool:
        if jax.process_count() > 1:
            if multihost_utils.reached_preemption_sync_point(step):
                self.signum = signal.SIGTERM
        return self.signum is not None

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def data_iterator(config: ml_collections.ConfigDict, synthetic, real):
    """This process's checkpointable iterator over training batches."""
    dataset = make_train_dataset(
        synthetic, real, batch_size=config.batch_size // jax.process_count(),
        image_size=config.image_size, seed=config.seed, grayscale=config.data.grayscale,
        on_device=config.synthetic.on_device)
    return iter(dataset.to_iter_dataset(grain.ReadOptions(
        num_threads=config.data.threads, prefetch_buffer_size=config.data.prefetch)))


def with_device_rendering(static: steps.Static, config, synthetic) -> steps.Static:
    """`static` with the synthetic batch rendered inside the step when
    `synthetic.on_device` (the data iterator then yields indices)."""
    if not config.synthetic.on_device:
        return static
    return dataclasses.replace(static, render_synthetic=functools.partial(
        render_on_device, source=synthetic, image_size=config.image_size))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains (or resumes) and returns the last logged metrics."""
    validate(config, jax.device_count())
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)

    mesh = data_mesh()
    synthetic, real = make_sources(config)
    total_steps, steps_per_epoch = num_train_steps(config, len(synthetic))
    data_iter = data_iterator(config, synthetic, real)

    key = jax.random.key(config.seed)
    static, init = steps.create(config, config.image_size, key, steps_per_epoch)
    static = with_device_rendering(static, config, synthetic)
    abstract = jax.eval_shape(init, key)
    train_step, state_sharding, data_sharding = steps.compile_step(static, mesh, abstract)
    predict = jax.jit(lambda s, x: steps.predict(s, x, static=static),
                      out_shardings=replicated(mesh))

    checkpoints = checkpointing.RunCheckpoints(workdir / "checkpoints",
                                               keep=config.checkpoint.keep)
    state = checkpoints.restore(
        checkpointing.abstract_with_sharding(abstract, state_sharding), data_iter)
    if state is None:
        state = jax.jit(init, out_shardings=state_sharding)(key)
        logging.info("Initialised a new run in %s", workdir)
    else:
        logging.info("Resumed from step %d in %s", int(state.step), workdir)
    start = int(jax.device_get(state.step))
    last_good = checkpoints.latest_step()

    writer = MetricWriter(workdir, resume_step=start)
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    evaluation = eval_sets(config)
    previews = (preview_batch(config, evaluation["eval"].source, real)
                if config.log.images_every_steps else None)
    logging.info("%d steps (%d per epoch), batch %d + %d on %d device(s)", total_steps,
                 steps_per_epoch, config.batch_size, config.batch_size, jax.device_count())

    history, last = [], {}
    preemption = PreemptionGuard()
    window_start, window_steps = time.perf_counter(), 0
    wait_s = 0.0
    try:
        for step in range(start + 1, total_steps + 1):
            t0 = time.perf_counter()
            batch = next(data_iter)
            wait_s += time.perf_counter() - t0
            batch = local_to_global(batch, data_sharding)
            if step == start + 1:
                # Compile ahead of the first step and give the compiler's freed
                # memory back before the step's buffers are allocated.
                train_step = train_step.lower(state, batch).compile()
                release_free_host_memory()
            state, metrics = train_step(state, batch)
            history.append(metrics)
            window_steps += 1

            final = step == total_steps
            stop = preemption.requested(step)
            log_now = step % config.log.every_steps == 0 or final or stop
            save_now = step % config.checkpoint.every_steps == 0 or final or stop
            if log_now or save_now:
                last = mean_metrics(history)
                history = []
                check_finite(last, step, last_good)
            if config.eval.every_steps and (step % config.eval.every_steps == 0 or final):
                eval_start = time.perf_counter()
                scores = evaluate_sets(
                    predict, state, evaluation, image_size=config.image_size,
                    num_images=config.eval.num_images, batch_size=config.batch_size,
                    sharding=data_sharding)
                if jax.process_index() == 0:
                    for prefix in evaluation:
                        print(f"{prefix} at step {step}: " + ", ".join(
                            f"{k.partition('/')[2]} {v:.3f}" for k, v in scores.items()
                            if k.startswith(prefix + "/")), flush=True)
                if log_now:
                    last.update(scores)
                else:
                    writer.write_scalars(step, scores)
                window_start += time.perf_counter() - eval_start   # not training time
            if log_now:
                elapsed = time.perf_counter() - window_start
                images_per_s = window_steps * config.batch_size / elapsed
                last.update(images_per_s=images_per_s,
                            input_wait_share=wait_s / elapsed,
                            epoch=step / steps_per_epoch)
                for domain, source in (("synthetic", synthetic), ("real", real)):
                    if getattr(source, "skipped", None) is not None:
                        # Unreadable records skipped so far (this process).
                        last[f"data/skipped_{domain}"] = source.skipped.count
                eta = (total_steps - step) * elapsed / window_steps
                writer.write_scalars(step, last)
                if jax.process_index() == 0:
                    print(console_line(step, total_steps, last, images_per_s, eta),
                          flush=True)
                window_start, window_steps, wait_s = time.perf_counter(), 0, 0.0
            if previews is not None and (
                    step % config.log.images_every_steps == 0 or final):
                grid = _draw_predictions(predict, state, previews, mesh)
                writer.write_image(step, "predictions", grid)
            if save_now:
                checkpoints.save(step, state, data_iter, config)
                last_good = step
            if stop:
                break
        checkpoints.wait()
    finally:
        preemption.close()
        checkpoints.close()
        writer.close()
    if preemption.signum is not None:
        raise Preempted(preemption.signum, last_good)
    return last


def _draw_predictions(predict, state, previews, mesh) -> np.ndarray:
    preds = {}
    for domain, batch in previews.items():
        images = same_to_global(normalize_images(batch["image"]), replicated(mesh))
        preds[domain] = jax.device_get(predict(state, images))
    return prediction_grid(previews, preds)
