"""`SyntheticScenes`: an endless, deterministic grain data source of renders.

Record i of a source is a pure function of (seed, i) and the configs, so runs
can be resumed and datasets shared by seed. Rendering a whole batch in one
jitted call is the fast path (`render_batch`, or `batched_dataset` to get a
grain pipeline that does it); `source[i]` renders one scene.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import inspect
import os
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np

from mtssl.data import render as rd
from mtssl.data import render_cache
from mtssl.data import scenes as sc

Sample = dict[str, np.ndarray]

# Images per render call on the culling path: larger groups amortise the
# per-call overhead (about 2 ms on CPU), smaller ones balance the threads.
_MAX_GROUP = 8


def record_keys(seed, index) -> tuple[jax.Array, jax.Array]:
    """The PRNG keys of record `index` of dataset `seed`: (scene, sensor noise)."""
    key = jax.random.fold_in(jax.random.key(seed), index)
    scene_key, noise_key = jax.random.split(key)
    return scene_key, noise_key


@functools.partial(jax.jit, static_argnames=("scene_cfg", "render_cfg"))
def render_indices(seed: jax.Array, indices: jax.Array, *,
                   scene_cfg: sc.SceneConfig, render_cfg: rd.RenderConfig,
                   count: jax.Array | None = None) -> dict[str, jax.Array]:
    """Renders records `indices` (int array (B,)) of the dataset `seed`.

    With `count` (int scalar; culling path only), only the first `count`
    records are rendered and the rest of the output is zeros: callers pad
    their groups to one length, so one compiled program serves every batch
    size.
    """
    def one(index):
        scene_key, noise_key = record_keys(seed, index)
        scene = sc.sample_scene(scene_key, scene_cfg)
        return rd.render(scene, noise_key, render_cfg)

    if not render_cfg.cull:
        return jax.vmap(one)(indices)
    if count is None:
        # One image at a time, so the renderer's culling branches are real.
        return jax.lax.map(one, indices)
    shapes = jax.eval_shape(one, indices[0])

    def one_or_nothing(args):
        i, index = args
        return jax.lax.cond(
            i < count, one,
            lambda _: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes), index)
    return jax.lax.map(one_or_nothing, (jnp.arange(indices.shape[0]), indices))


@functools.cache
def _pool(workers: int) -> concurrent.futures.ThreadPoolExecutor:
    # Shared and never shut down: sources are pickled into grain workers, and
    # a pool cannot be; each process makes its own on first use.
    return concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="render")


class SyntheticScenes(grain.sources.RandomAccessDataSource):
    """Procedural indoor scenes with depth, normals, instances and contours.

    Each record is a dict: `image` uint8 (H, W, 3); `depth` float32 (H, W)
    planar z-depth in metres; `normals` float32 (H, W, 3) unit camera-frame
    normals (OpenCV axes, facing the camera); `instances` int32 (H, W);
    `contours` bool (H, W) instance boundaries; `intrinsics` float32 (3, 3).

    Args (keyword only):
      resolution: square image side in pixels.
      seed: dataset seed; (seed, index) fixes a record.
      num_records: `len(source)`; indices wrap around modulo it.
      scene: a `SceneConfig`, or None for the default distribution.
      aa_samples, aa_fraction, shadows, sensor_effects, cull, tile: see
        `RenderConfig`.
      threads: concurrent render calls when culling (default: one per core).
      cache_dir: a render cache folder (`mtssl.data.render_cache`): records
        found there are read back instead of rendered, new ones are stored;
        None or "" = no cache.
    """

    def __init__(self, *, resolution: int = 128, seed: int = 0,
                 num_records: int = 1_000_000,
                 scene: sc.SceneConfig | None = None, aa_samples: int = 4,
                 aa_fraction: float = 0.25, shadows: bool = True,
                 sensor_effects: bool = True, cull: bool | None = None,
                 tile: int | None = None, threads: int | None = None,
                 cache_dir: str | None = None):
        if num_records < 1:
            raise ValueError(f"num_records must be >= 1, got {num_records}")
        if not 0 <= seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {seed}")
        self.seed = int(seed)
        self.num_records = int(num_records)
        self.scene_config = scene or sc.SceneConfig()
        self.render_config = rd.RenderConfig(
            resolution=resolution, aa_samples=aa_samples,
            aa_fraction=aa_fraction, shadows=shadows,
            sensor_effects=sensor_effects, cull=cull, tile=tile)
        self.threads = int(threads or os.cpu_count() or 1)
        self.cache_dir = cache_dir or None
        self._cache = (render_cache.RenderCache(cache_dir, self._description())
                       if cache_dir else None)

    @property
    def resolution(self) -> int:
        return self.render_config.resolution

    def __len__(self) -> int:
        return self.num_records

    def __getitem__(self, index: int) -> Sample:
        batch = self.render_batch([index])
        return {k: v[0] for k, v in batch.items()}

    def render_batch(self, indices: Sequence[int] | np.ndarray) -> Sample:
        """Renders several records: dict of (B, ...) numpy arrays.

        With culling on (CPU) each call renders its images one after another,
        so the batch is cut into groups of at most `_MAX_GROUP` shared out
        over `threads` workers, one per core; every group is padded to
        `_MAX_GROUP` records of which only its own are rendered, so one
        compiled program serves every batch size. Otherwise the whole batch
        is one vmapped call. With `cache_dir`, stored records are read back
        and the others rendered and stored.
        """
        idx = (np.asarray(indices, dtype=np.int64) % self.num_records).astype(np.uint32)
        if self._cache is not None:
            return self._render_through_cache(idx)
        return self._render_records(idx)

    def _render_through_cache(self, idx: np.ndarray) -> Sample:
        records = {int(i): self._cache.get(int(i)) for i in np.unique(idx)}
        missing = np.array([i for i, r in records.items() if r is None], np.uint32)
        if len(missing):
            # The vmapped path compiles one program per batch size: it renders
            # the whole batch rather than a new size of it.
            todo = missing if self.render_config.cull else idx
            fresh = self._render_records(todo)
            for j, i in enumerate(todo):
                if records[int(i)] is None:
                    records[int(i)] = {k: v[j] for k, v in fresh.items()}
                    self._cache.put(int(i), records[int(i)])
        return {k: np.stack([records[int(i)][k] for i in idx])
                for k in records[int(idx[0])]}

    def _render_records(self, idx: np.ndarray) -> Sample:
        if not self.render_config.cull:
            return jax.device_get(self._render(idx))
        group = min(_MAX_GROUP, -(-len(idx) // self.threads))

        def render_group(start: int) -> Sample:
            part = idx[start:start + group]
            padded = np.concatenate([part, np.zeros(_MAX_GROUP - len(part), np.uint32)])
            out = jax.device_get(self._render(padded, count=np.int32(len(part))))
            return {k: v[:len(part)] for k, v in out.items()}

        starts = range(0, len(idx), group)
        outs = (list(_pool(self.threads).map(render_group, starts)) if len(starts) > 1
                else [render_group(0)])
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

    def _render(self, idx: np.ndarray, count: np.ndarray | None = None):
        return render_indices(np.uint32(self.seed), idx, scene_cfg=self.scene_config,
                              render_cfg=self.render_config, count=count)

    def _description(self) -> str:
        """What fixes the records (not threads or the cache itself)."""
        return (f"SyntheticScenes(resolution={self.resolution}, seed={self.seed}, "
                f"num_records={self.num_records}, scene={self.scene_config}, "
                f"render={self.render_config})")

    def __repr__(self) -> str:
        cache = f", cache_dir={self.cache_dir!r}" if self.cache_dir else ""
        return self._description()[:-1] + cache + ")"


def from_config(config: Mapping[str, Any]) -> SyntheticScenes:
    """A `SyntheticScenes` from a config such as `configs/scenes.py`'s.

    Unknown keys are an error that lists the valid ones, so a typo never
    silently falls back to a default.
    """
    config = dict(config)
    scene = dict(config.pop("scene", {}) or {})
    valid = [p for p in inspect.signature(SyntheticScenes).parameters if p != "scene"]
    _check_keys("synthetic data config", config, valid)
    _check_keys("scene config", scene, [f.name for f in dataclasses.fields(sc.SceneConfig)])
    scene = {k: tuple(v) if isinstance(v, list) else v for k, v in scene.items()}
    return SyntheticScenes(scene=sc.SceneConfig(**scene), **config)


def _check_keys(what: str, given: Mapping[str, Any], valid: Sequence[str]) -> None:
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in the {what}; valid keys: "
                         f"{', '.join(sorted(valid))}")


@dataclasses.dataclass(frozen=True)
class RenderBatch(grain.transforms.Map):
    """grain transform: a batch of record indices -> the rendered batch."""

    source: SyntheticScenes

    def map(self, indices: Any) -> Sample:
        return self.source.render_batch(np.asarray(indices))


def batched_dataset(source: SyntheticScenes, batch_size: int, *,
                    shuffle_seed: int | None = None) -> grain.MapDataset:
    """A grain MapDataset of rendered batches, one render call per batch.

    Indices are batched first and the whole batch is rendered by one jitted
    call, which is many times faster than rendering records one by one.
    """
    ds = grain.MapDataset.range(len(source))
    if shuffle_seed is not None:
        ds = ds.shuffle(seed=shuffle_seed)
    return ds.batch(batch_size, drop_remainder=True).map(RenderBatch(source))
