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
    (`mtssl.eval.dense`);
  * saves a checkpoint every `checkpoint.every_steps` and at the end, each
    only after the metrics since the previous check were finite, so the
    newest checkpoint is always a good one. A non-finite loss stops the run
    with FloatingPointError naming the loss and the step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from etils import epath

from mtssl import checkpointing, steps
from mtssl.config import validate
from mtssl.data import visualize
from mtssl.data.pipeline import make_train_dataset, normalize_images, render_on_device
from mtssl.data.sources import synthetic_batch, training_sources
from mtssl.eval.dense import eval_sets, evaluate_sets
from mtssl.loop import (
    SavingLoop,
    check_finite,
    console_line,
    itstime,
    mean_metrics,
    num_train_steps,
    release_free_host_memory,
    say,
)
from mtssl.mesh import data_mesh, local_to_global, replicated, same_to_global
from mtssl.metric_writers import MetricWriter


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


def data_iterator(config: ml_collections.ConfigDict, synthetic, real):
    """This process's checkpointable iterator over training batches."""
    dataset = make_train_dataset(
        synthetic, real, batch_size=config.batch_size // jax.process_count(),
        image_size=config.image_size, seed=config.seed, grayscale=config.data.grayscale,
        on_device=config.synthetic.on_device, reuse=config.synthetic.reuse)
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
    synthetic, real = training_sources(config)
    total_steps, steps_per_epoch = num_train_steps(config, len(synthetic))
    data_iter = data_iterator(config, synthetic, real)

    key = jax.random.key(config.seed)
    static, init = steps.create(config, config.image_size, key, steps_per_epoch,
                                total_steps)
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
        state = steps.initial_state(init, key, state_sharding)
        say(f"Initialised a new run in {workdir}")
    else:
        say(f"Resumed from step {int(state.step)} in {workdir}")
    start = int(jax.device_get(state.step))

    writer = MetricWriter(workdir, resume_step=start)
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    evaluation = eval_sets(config)
    previews = (preview_batch(config, evaluation["eval"].source, real)
                if config.log.images_every_steps else None)
    say(f"{total_steps} steps ({steps_per_epoch} per epoch), batch {config.batch_size} "
        f"+ {config.batch_size} on {jax.device_count()} device(s)")

    history, last = [], {}
    window_start, window_steps = time.perf_counter(), 0
    wait_s = 0.0
    with SavingLoop(checkpoints) as saving, contextlib.closing(writer):
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

            stop = saving.stop_requested(step)
            log_now = itstime(step, config.log.every_steps, total_steps) or stop
            save_now = itstime(step, config.checkpoint.every_steps, total_steps) or stop
            if log_now or save_now:
                last = mean_metrics(history)
                history = []
                check_finite(last, step, saving.last_good)
            if itstime(step, config.eval.every_steps, total_steps):
                eval_start = time.perf_counter()
                scores = evaluate_sets(
                    predict, state, evaluation, image_size=config.image_size,
                    num_images=config.eval.num_images, batch_size=config.batch_size,
                    sharding=data_sharding)
                for prefix in evaluation:
                    say(f"{prefix} at step {step}: " + ", ".join(
                        f"{k.partition('/')[2]} {v:.3f}" for k, v in scores.items()
                        if k.startswith(prefix + "/")))
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
                say(console_line(step, total_steps, last, images_per_s, eta))
                window_start, window_steps, wait_s = time.perf_counter(), 0, 0.0
            if previews is not None and itstime(step, config.log.images_every_steps,
                                                total_steps):
                grid = _draw_predictions(predict, state, previews, mesh)
                writer.write_image(step, "predictions", grid)
            if save_now:
                saving.save(step, state, data_iter, config)
            if stop:
                break
        saving.finish()
    return last


def _draw_predictions(predict, state, previews, mesh) -> np.ndarray:
    preds = {}
    for domain, batch in previews.items():
        images = same_to_global(normalize_images(batch["image"]), replicated(mesh))
        preds[domain] = jax.device_get(predict(state, images))
    return visualize.prediction_grid(previews, preds)
