"""The data sources of a pretraining config, built in one place.

  training_sources(config)  (synthetic, real or None): what the run trains on;
  synthetic_source(config)  the synthetic domain of `synthetic.source`
                            ("render" = the scene engine, "folder:<path>");
  held_out_source(config)   held-out scenes of that domain: the scene engine
                            under another dataset seed (`HELD_OUT_SEED_OFFSET`),
                            so no evaluation scene is a training scene, or the
                            folder itself (evaluation reads its last frames);
  real_source(config)       the real domain of `real.source` (whether or not
                            DA is on: diagnostics read it too);
  target_source(config, held_out=)  the procedural target domain: the scene
                            engine with `scenes.TARGET_APPEARANCE`, training and
                            held-out scenes under different seeds;
  synthetic_batch(source, indices, size)  records as one centre-cropped batch.

Training, dense evaluation, diagnostics and the notebook all call these, so
a held-out scene is the same scene everywhere.
"""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

from mtssl.data import real as real_data
from mtssl.data.on_disk import SyntheticFolder
from mtssl.data.pipeline import SYNTHETIC_MAPS
from mtssl.data.scenes import TARGET_APPEARANCE
from mtssl.data.synthetic import from_config as scenes_from_config

HELD_OUT_SEED_OFFSET = 1_000_003
TARGET_SEED_OFFSET = 2_000_029


def _render_config(config: ml_collections.ConfigDict, seed_offset: int):
    render = ml_collections.ConfigDict(config.synthetic.render.to_dict())
    render.seed = (render.seed + seed_offset) % 2**32
    return render


def synthetic_source(config: ml_collections.ConfigDict, *, held_out: bool = False):
    kind, _, arg = config.synthetic.source.partition(":")
    if kind == "render":
        return scenes_from_config(_render_config(
            config, HELD_OUT_SEED_OFFSET if held_out else 0))
    s = config.synthetic
    return SyntheticFolder(root=arg, resolution=config.image_size, depth_scale=s.depth_scale,
                           depth_kind=s.depth_kind, max_depth=s.max_depth,
                           normal_axes=s.normal_axes)


def held_out_source(config: ml_collections.ConfigDict):
    return synthetic_source(config, held_out=True)


def target_source(config: ml_collections.ConfigDict, *, held_out: bool):
    render = _render_config(
        config, TARGET_SEED_OFFSET + (HELD_OUT_SEED_OFFSET if held_out else 0))
    render.scene.update(TARGET_APPEARANCE)
    render.resolution = config.image_size
    return scenes_from_config(render)


def real_source(config: ml_collections.ConfigDict):
    """The real domain of `real.source` (package | imagefolder:<path> |
    tfds:<name> | target)."""
    kind, arg = config.real.source.partition(":")[::2]
    if kind == "target":
        return target_source(config, held_out=False)
    crop = config.real.crop
    if crop == "auto":
        crop = "random_crop" if kind == "package" else "resize"
    common = dict(resolution=config.image_size, seed=config.seed, crop=crop,
                  min_scale=config.real.min_scale)
    if kind == "package":
        return real_data.PackagePhotos(**common)
    if kind == "imagefolder":
        return real_data.ImageFolder(root=arg, **common)
    return real_data.TfdsImages(name=arg, split=config.real.split,
                                data_dir=config.real.data_dir or None, **common)


def training_sources(config: ml_collections.ConfigDict) -> tuple[Any, Any]:
    """(synthetic source, real source or None when DA is off)."""
    return synthetic_source(config), real_source(config) if config.da.enabled else None


def _center_crop(a: np.ndarray, size: int) -> np.ndarray:
    top, left = (a.shape[1] - size) // 2, (a.shape[2] - size) // 2
    return a[:, top:top + size, left:left + size]


def synthetic_batch(source, indices: np.ndarray, size: int) -> dict[str, np.ndarray]:
    """Records `indices` of a synthetic source, centre-cropped to `size`."""
    if hasattr(source, "render_batch"):
        batch = source.render_batch(indices)
    else:
        records = [source[int(i)] for i in indices]
        batch = {k: np.stack([r[k] for r in records]) for k in records[0]}
    return {k: _center_crop(batch[k], size) for k in SYNTHETIC_MAPS}
