"""Dense-task evaluation of a pretraining run on held-out synthetic scenes.

    python -m mtssl.eval.dense --config=configs/dense.py --workdir=runs/local \
        [--config.num_images=256] [--config.step=N] [--config.nyu=True]

The evaluation sets of a run (`eval_sets(config)`), each logged under its
prefix:
  eval/...         held-out scenes of the training domain (always);
  eval_target/...  held-out scenes of the procedural target domain, when
                   `real.source="target"`: their labels are never trained on,
                   so the gap to eval/ measures how well the features transfer
                   across the appearance change, with and without DA;
  eval_nyu/...     NYU Depth v2 (TFDS `nyu_depth_v2`, `eval.nyu_split`) depth
                   and normals, when `eval.nyu` (or the command's `nyu`) and the dataset is
                   prepared; depth median-scaled per image by default
                   (`eval.nyu_median_scaling`), as synthetic metres need not be
                   NYU metres. See `mtssl.data.nyu`.

Held-out scenes (`mtssl.data.sources`): for the scene engine, the same
scene and render settings with another dataset seed, so no evaluation scene
is a training scene; for an on-disk synthetic dataset, its last
`num_images` frames. Images are centre-cropped to the training size and
predicted in inference mode; the metrics are those of `mtssl.eval.dense_metrics`.
Training calls `evaluate_sets` every `eval.every_steps`. The standalone
command writes `<workdir>/eval_<step>.json` and prints it.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from mtssl import steps
from mtssl.cli import run_config_command
from mtssl.config import tasks_of
from mtssl.data.nyu import NyuDepthV2
from mtssl.data.on_disk import SyntheticFolder
from mtssl.data.pipeline import normalize_images
from mtssl.data.sources import held_out_source, synthetic_batch, target_source
from mtssl.eval.dense_metrics import DenseMetrics
from mtssl.mesh import batch_sharding, data_mesh, replicated, same_to_global
from mtssl.pretrained import load_run

@dataclasses.dataclass(frozen=True)
class EvalSet:
    source: Any
    tasks: tuple[str, ...]
    median_scaling: bool = False


def eval_sets(config: ml_collections.ConfigDict,
              nyu: bool | None = None) -> dict[str, EvalSet]:
    """{prefix: EvalSet} of a run (see module docstring); `nyu` overrides
    `eval.nyu`. Opening NYU fails here, with the fix, when it is not prepared."""
    tasks = tasks_of(config)
    sets = {"eval": EvalSet(held_out_source(config), tasks)}
    if config.real.source == "target":
        sets["eval_target"] = EvalSet(target_source(config, held_out=True), tasks)
    evalc = config.eval
    nyu_tasks = tuple(t for t in tasks if t in ("depth", "normals"))
    if (evalc.get("nyu", False) if nyu is None else nyu) and nyu_tasks:
        source = NyuDepthV2(split=evalc.get("nyu_split", "validation"),
                            resolution=config.image_size,
                            data_dir=evalc.get("data_dir", "") or None)
        sets["eval_nyu"] = EvalSet(source, nyu_tasks,
                                   evalc.get("nyu_median_scaling", True))
    return sets


def evaluate_dense(predict, state, source, *, tasks, image_size: int, num_images: int,
                   batch_size: int, sharding, median_scaling: bool = False) -> dict[str, float]:
    """Dense metrics of `predict(state, images)` on the first `num_images`
    (or, for folders, the last) records of `source`, in batches of
    `batch_size` (the last batch padded, so one program serves all). Every
    process reads the same batches; `predict` must return replicated arrays."""
    n = min(num_images, len(source))
    first = len(source) - n if isinstance(source, SyntheticFolder) else 0
    metrics = DenseMetrics(tasks, median_scaling=median_scaling)
    for start in range(0, n, batch_size):
        idx = np.arange(first + start, first + min(start + batch_size, n))
        padded = np.concatenate([idx, np.repeat(idx[-1:], batch_size - len(idx))])
        batch = synthetic_batch(source, padded, image_size)
        images = same_to_global(normalize_images(batch["image"]), sharding)
        preds = jax.device_get(predict(state, images))
        metrics.update({k: v[:len(idx)] for k, v in preds.items()},
                       {k: v[:len(idx)] for k, v in batch.items()})
    return metrics.result()


def evaluate_sets(predict, state, sets: dict[str, EvalSet], *, image_size: int,
                  num_images: int, batch_size: int, sharding) -> dict[str, float]:
    """{"<prefix>/<metric>": value} over all `sets`."""
    scores = {}
    for prefix, s in sets.items():
        result = evaluate_dense(predict, state, s.source, tasks=s.tasks,
                                image_size=image_size, num_images=num_images,
                                batch_size=batch_size, sharding=sharding,
                                median_scaling=s.median_scaling)
        scores.update({f"{prefix}/{k}": v for k, v in result.items()})
    return scores


def evaluate_checkpoint(workdir: str, *, num_images: int, step: int | None = None,
                        batch_size: int = 16, nyu: bool | None = None) -> dict[str, float]:
    """Restores a run's checkpoint and evaluates it on its `eval_sets`."""
    config, static, state, step = load_run(workdir, step)
    mesh = data_mesh()
    batch_size = -(-batch_size // jax.device_count()) * jax.device_count()
    predict = jax.jit(lambda s, x: steps.predict(s, x, static=static),
                      out_shardings=replicated(mesh))
    result = evaluate_sets(predict, state, eval_sets(config, nyu),
                           image_size=config.image_size, num_images=num_images,
                           batch_size=batch_size, sharding=batch_sharding(mesh))
    return {"step": step, "num_images": num_images, **result}


def run(config, workdir: str) -> dict[str, float]:
    """Evaluates run `workdir` as `config` (configs/dense.py) says and writes
    `<workdir>/eval_<step>.json`."""
    if config.num_images < 1 or config.batch_size < 1:
        raise ValueError("num_images and batch_size must be >= 1")
    result = evaluate_checkpoint(workdir, num_images=config.num_images,
                                 step=None if config.step < 0 else config.step,
                                 batch_size=config.batch_size, nyu=config.nyu or None)
    if jax.process_index() == 0:
        out = epath.Path(workdir) / f"eval_{result['step']}.json"
        out.write_text(json.dumps(result, indent=1))
        print(json.dumps(result, indent=1), flush=True)
    return result


if __name__ == "__main__":
    run_config_command(run, "Dense evaluation config (configs/dense.py).",
                       "The pretraining workdir to evaluate.")
