"""The training input pipeline: synthetic and real batches, zipped, preprocessed.

`make_train_dataset` returns one grain `MapDataset` (infinite, random access,
so an iterator over it checkpoints as a few integers) whose element i is

    {"synthetic": {"image", "depth", "normals", "contours", "semantics"},
     "real": {"image"}}

with float32 images normalised as the reference does: x / 255 minus the
ImageNet mean, and optionally the grayscale trick (one random RGB channel of
the batch copied to all three, the same channel for both domains, to take
away colour cues that differ between renders and photos). Synthetic samples
get one random crop shared by all their maps, no flips (the reference: 256
renders, 227 crops). Each process reads its own slice of both sources.

With `reuse` R > 1 each synthetic record is trained on R times, as the paper's
30 epochs over a fixed set of renders do, without a cache of the whole set:
batch i holds B/R records drawn fresh for it and the B/R records of each of
the batches i - REUSE_DELAY, i - 2 * REUSE_DELAY, ..., each with a new crop.
The host renders B/R records a batch instead of B; the renders of the last
few batches are kept in memory, and a record not found there (after a
resume) is rendered again, to the same bits.
"""

from __future__ import annotations

import collections
import dataclasses
import threading

import grain
import jax
import jax.numpy as jnp
import numpy as np

from mtssl.data.synthetic import RenderBatch, SyntheticScenes, render_indices

# What a synthetic training sample carries: the image and every task's target
# (semantics: `scenes.NO_CLASS` where a source has no class labels).
SYNTHETIC_MAPS = ("image", "depth", "normals", "contours", "semantics")

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
# Normalised value of each uint8 level per channel, float32 (x / 255 - mean).
# The device reads it by table lookup (XLA may fuse the arithmetic into other
# roundings); numpy's float32 arithmetic gives these bits exactly (tested).
NORMALIZED_LEVELS = (np.arange(256, dtype=np.float32)[None, :] / np.float32(255.0)
                     - IMAGENET_MEAN[:, None]).astype(np.float32)      # (3, 256)


def normalize_images(images: np.ndarray, channel: int | None = None) -> np.ndarray:
    """uint8 (..., 3) -> float32 /255 minus the ImageNet mean; with `channel`,
    that channel replaces all three first (the grayscale trick)."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"normalize_images takes uint8 images, got {images.dtype}")
    if channel is not None:
        images = np.repeat(images[..., channel:channel + 1], 3, axis=-1)
    # In place, as float32: the table's bits, 5x faster than a numpy gather.
    out = np.divide(images, np.float32(255.0), dtype=np.float32)
    return np.subtract(out, IMAGENET_MEAN, out=out)


def target_maps(sample: dict) -> dict:
    """The task targets of a synthetic sample or batch, in the dtypes the
    losses take (numpy or jax arrays alike)."""
    return {"depth": sample["depth"].astype(np.float32),
            "normals": sample["normals"].astype(np.float32),
            "contours": sample["contours"].astype(bool),
            "semantics": sample["semantics"].astype(np.int32)}


def _crop_offsets(rng: np.random.Generator, n: int, h: int, w: int, size: int):
    """(tops, lefts) of one random `size` crop per sample; no draws when the
    samples are already `size` (the host and device paths draw alike)."""
    if (h, w) == (size, size):
        return np.zeros(n, np.int32), np.zeros(n, np.int32)
    if h < size or w < size:
        raise ValueError(f"crop {size} is larger than the {h}x{w} samples")
    return rng.integers(0, h - size + 1, n), rng.integers(0, w - size + 1, n)


@dataclasses.dataclass(frozen=True)
class CropSynthetic(grain.transforms.RandomMap):
    """One random `size` crop per sample, shared by image and all its maps.
    With on-device rendering (the batch holds record indices, not renders) it
    draws the same crops and passes them on as `crop` (B, 2) offsets."""

    size: int
    resolution: int | None = None      # of the renders, when only indices are here

    def random_map(self, batch, rng: np.random.Generator):
        if "index" in batch:
            n = len(batch["index"])
            tops, lefts = _crop_offsets(rng, n, self.resolution, self.resolution, self.size)
            return {"index": batch["index"],
                    "crop": np.stack([tops, lefts], -1).astype(np.int32)}
        n, h, w = batch["image"].shape[:3]
        if (h, w) == (self.size, self.size):
            return batch
        tops, lefts = _crop_offsets(rng, n, h, w, self.size)
        out = {}
        for key in SYNTHETIC_MAPS:
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
        if "index" in syn:             # rendered on device (`render_on_device`)
            out = {"synthetic": {**syn, "channel": np.full(
                len(syn["index"]), -1 if channel is None else channel, np.int32)}}
        else:
            out = {"synthetic": {"image": normalize_images(syn["image"], channel),
                                 **target_maps(syn)}}
        if real is not None:
            out["real"] = {"image": normalize_images(real["image"], channel)}
        return out


def _shuffled_indices(n: int, seed: int) -> grain.MapDataset:
    """This process's share of range(n), reshuffled every epoch, endless."""
    ds = grain.MapDataset.range(n)[jax.process_index()::jax.process_count()]
    return ds.shuffle(seed=seed).repeat()


# Steps between a reused record's uses: far enough apart that a batch shares
# none of its records with the few batches around it, near enough that the
# renders in between stay small (runlocal: 128 records, 39 MB).
REUSE_DELAY = 8


def _batches(source, batch_size: int, seed: int, on_device: bool = False,
             reuse: int = 1) -> grain.MapDataset:
    if batch_size % reuse:
        raise ValueError(f"the per-process batch {batch_size} must be a multiple of "
                         f"reuse={reuse}")
    shuffled = _shuffled_indices(len(source), seed)
    indices = shuffled.batch(batch_size // reuse, drop_remainder=True)
    if reuse > 1:
        # As long as the batches without reuse (zip needs equal lengths).
        indices = indices.map_with_index(_ReusedIndices(indices, reuse))[
            :len(shuffled) // batch_size]
    if on_device:
        return indices.map(_RecordIndices(source.num_records))
    # One render call per batch.
    fetch = RenderBatch(source) if isinstance(source, SyntheticScenes) else _GatherBatch(source)
    if reuse > 1:
        # The records of the batches a reused record spans, and the batches
        # the loader's threads and prefetch buffer are ahead by.
        keep = batch_size // reuse * ((reuse - 1) * REUSE_DELAY + 8)
        return indices.map(_RecentRecords(fetch.map, keep))
    return indices.map(fetch)


@dataclasses.dataclass(frozen=True)
class _ReusedIndices(grain.transforms.MapWithIndex):
    """Chunk i of B/R indices -> batch i's B indices: chunks i + (R-1) d,
    i + (R-2) d, ..., i (d = REUSE_DELAY), so each chunk is in R batches."""

    chunks: grain.MapDataset
    reuse: int

    def map_with_index(self, index, chunk):
        newest = index + (self.reuse - 1) * REUSE_DELAY
        return np.concatenate([np.asarray(self.chunks[newest - r * REUSE_DELAY])
                               for r in range(self.reuse - 1)] + [np.asarray(chunk)])


class _RecentRecords(grain.transforms.Map):
    """A batch of indices -> the stacked records `fetch(indices)` gives,
    keeping the last `capacity` records and fetching only the others (a
    record is a pure function of its index, so a hit and a fetch give the
    same bits). Thread-safe: grain's threads share it."""

    def __init__(self, fetch, capacity: int):
        self.fetch, self.capacity = fetch, capacity
        self._records: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def map(self, indices):
        indices = [int(i) for i in np.asarray(indices)]
        unique = list(dict.fromkeys(indices))
        with self._lock:
            found = {i: self._records[i] for i in unique if i in self._records}
        missing = [i for i in unique if i not in found]
        if missing:
            fresh = self.fetch(np.asarray(missing))
            found.update({i: {k: v[j] for k, v in fresh.items()}
                          for j, i in enumerate(missing)})
        with self._lock:
            for i in unique:
                self._records[i] = found[i]
                self._records.move_to_end(i)
            while len(self._records) > self.capacity:
                self._records.popitem(last=False)
        return {k: np.stack([found[i][k] for i in indices]) for k in found[indices[0]]}


@dataclasses.dataclass(frozen=True)
class _RecordIndices(grain.transforms.Map):
    """A batch of indices -> the record indices `render_batch` would render."""

    num_records: int

    def map(self, indices):
        index = np.asarray(indices, np.int64) % self.num_records
        return {"index": index.astype(np.uint32)}


def render_on_device(synthetic: dict[str, jax.Array], *, source: SyntheticScenes,
                     image_size: int) -> dict[str, jax.Array]:
    """Inside a jitted step: {"index", "crop", "channel"} from the on-device
    pipeline -> the synthetic batch the host pipeline makes for the same seeds
    (same renders, crops, grayscale channel and normalisation)."""
    out = render_indices(np.uint32(source.seed), synthetic["index"],
                         scene_cfg=source.scene_config, render_cfg=source.render_config)

    def crop(a, offset):
        start = (offset[0], offset[1]) + (0,) * (a.ndim - 2)
        return jax.lax.dynamic_slice(a, start, (image_size, image_size) + a.shape[2:])
    maps = {k: jax.vmap(crop)(out[k], synthetic["crop"]) for k in SYNTHETIC_MAPS}
    levels = maps["image"].astype(jnp.int32)
    channel = synthetic["channel"][:, None, None, None]
    gray = jnp.take_along_axis(levels, jnp.maximum(channel, 0), axis=-1)
    levels = jnp.where(channel >= 0, jnp.broadcast_to(gray, levels.shape), levels)
    image = jnp.asarray(NORMALIZED_LEVELS)[jnp.arange(3), levels]
    return {"image": image, **target_maps(maps)}


@dataclasses.dataclass(frozen=True)
class _GatherBatch(grain.transforms.Map):
    """A batch of indices -> the stacked records of `source`."""

    source: object

    def map(self, indices):
        records = [self.source[int(i)] for i in np.asarray(indices)]
        return {k: np.stack([r[k] for r in records]) for k in records[0]}


def make_train_dataset(synthetic_source, real_source, *, batch_size: int,
                       image_size: int, seed: int, grayscale: bool,
                       on_device: bool = False, reuse: int = 1) -> grain.MapDataset:
    """The zipped, preprocessed, endless training dataset (per-process batch).
    With `real_source=None` (no domain adaptation) elements have no "real".
    With `on_device` (scene engine only) "synthetic" holds record indices,
    crop offsets and the grayscale channel; `render_on_device` turns them
    into the batch this function would otherwise have made. `reuse`: see the
    module doc."""
    if on_device and not isinstance(synthetic_source, SyntheticScenes):
        raise ValueError("on-device rendering needs the scene engine (synthetic.source=render)")
    resolution = synthetic_source.resolution if on_device else None
    syn = _batches(synthetic_source, batch_size, seed, on_device, reuse).random_map(
        CropSynthetic(image_size, resolution), seed=seed + 1)
    if real_source is not None:
        real = _batches(real_source, batch_size, seed + 2)
        syn = grain.experimental.ZipMapDataset([syn, real])
    return syn.random_map(Preprocess(grayscale), seed=seed + 3)
