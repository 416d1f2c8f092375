"""The training input pipeline: synthetic and real batches, zipped, preprocessed.

`make_train_dataset` returns one grain `MapDataset` (infinite, random access,
so an iterator over it checkpoints as a few integers) whose element i is

    {"synthetic": {"image", "depth", "normals", "contours"},
     "real": {"image"}}

with float32 images normalised as the reference does: x / 255 minus the
ImageNet mean, and optionally the grayscale trick (one random RGB channel of
the batch copied to all three, the same channel for both domains, to take
away colour cues that differ between renders and photos). Synthetic samples
get one random crop shared by all their maps, no flips (the reference: 256
renders, 227 crops). Each process reads its own slice of both sources.
"""

from __future__ import annotations

import dataclasses

import grain
import jax
import numpy as np

from mtssl.data.synthetic import RenderBatch, SyntheticScenes

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)


def normalize_images(images: np.ndarray, channel: int | None = None) -> np.ndarray:
    """uint8 (..., 3) -> float32 /255 minus the ImageNet mean; with `channel`,
    that channel replaces all three first (the grayscale trick)."""
    x = images.astype(np.float32) / 255.0
    if channel is not None:
        x = np.repeat(x[..., channel:channel + 1], 3, axis=-1)
    return x - IMAGENET_MEAN


@dataclasses.dataclass(frozen=True)
class CropSynthetic(grain.transforms.RandomMap):
    """One random `size` crop per sample, shared by image and all its maps."""

    size: int

    def random_map(self, batch, rng: np.random.Generator):
        n, h, w = batch["image"].shape[:3]
        if (h, w) == (self.size, self.size):
            return batch
        if h < self.size or w < self.size:
            raise ValueError(f"crop {self.size} is larger than the {h}x{w} samples")
        tops = rng.integers(0, h - self.size + 1, n)
        lefts = rng.integers(0, w - self.size + 1, n)
        out = {}
        for key in ("image", "depth", "normals", "contours"):
            out[key] = np.stack([batch[key][i, t:t + self.size, l:l + self.size]
                                 for i, (t, l) in enumerate(zip(tops, lefts))])
        return out


@dataclasses.dataclass(frozen=True)
class Preprocess(grain.transforms.RandomMap):
    """(synthetic batch, real batch) -> the training element (see module doc)."""

    grayscale: bool

    def random_map(self, pair, rng: np.random.Generator):
        syn, real = pair if isinstance(pair, tuple) else (pair, None)
        channel = int(rng.integers(0, 3)) if self.grayscale else None
        out = {"synthetic": {"image": normalize_images(syn["image"], channel),
                             "depth": syn["depth"].astype(np.float32),
                             "normals": syn["normals"].astype(np.float32),
                             "contours": syn["contours"].astype(bool)}}
        if real is not None:
            out["real"] = {"image": normalize_images(real["image"], channel)}
        return out


def _shuffled_indices(n: int, seed: int) -> grain.MapDataset:
    """This process's share of range(n), reshuffled every epoch, endless."""
    ds = grain.MapDataset.range(n)[jax.process_index()::jax.process_count()]
    return ds.shuffle(seed=seed).repeat()


def _batches(source, batch_size: int, seed: int) -> grain.MapDataset:
    indices = _shuffled_indices(len(source), seed).batch(batch_size, drop_remainder=True)
    if isinstance(source, SyntheticScenes):
        return indices.map(RenderBatch(source))     # one render call per batch
    return indices.map(_GatherBatch(source))


@dataclasses.dataclass(frozen=True)
class _GatherBatch(grain.transforms.Map):
    """A batch of indices -> the stacked records of `source`."""

    source: object

    def map(self, indices):
        records = [self.source[int(i)] for i in np.asarray(indices)]
        return {k: np.stack([r[k] for r in records]) for k in records[0]}


def make_train_dataset(synthetic_source, real_source, *, batch_size: int,
                       image_size: int, seed: int, grayscale: bool) -> grain.MapDataset:
    """The zipped, preprocessed, endless training dataset (per-process batch).
    With `real_source=None` (no domain adaptation) elements have no "real"."""
    syn = _batches(synthetic_source, batch_size, seed).random_map(
        CropSynthetic(image_size), seed=seed + 1)
    if real_source is not None:
        real = _batches(real_source, batch_size, seed + 2)
        syn = grain.experimental.ZipMapDataset([syn, real])
    return syn.random_map(Preprocess(grayscale), seed=seed + 3)
