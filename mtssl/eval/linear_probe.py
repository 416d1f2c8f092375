"""Linear probes on frozen encoder features (the Zhang et al. protocol).

    python -m mtssl.eval.linear_probe --config=configs/linear_probe.py --workdir=out \\
        --config.checkpoint=runs/local --config.dataset=tfds:cifar10

Contract (scripts rely on it): `--workdir` is the output directory;
`--config.checkpoint` a pretraining workdir or checkpoint directory, or ""
for the random-init baseline of the same architecture (`config.model`);
`--config.dataset` is "photos" or "digits" (embedded), "imagefolder:<path>"
or "tfds:<name>". The result is `<workdir>/probe.json`:
{"<layer>": {"accuracy": test accuracy, "val_accuracy": ..., "l2": chosen
weight decay, "dims": feature size, "protocol": {"taps", "bn_stats",
"grayscale"}, ["map": test mAP for multi-label sets]}}
plus `probe.md` (a table) and `probe_run.json` (the run's settings).

How (the standard protocol, each part a config field named in the outputs):
the frozen encoder runs in inference mode on colour images; each layer's
features after its ReLU (`taps="post_relu"`, as in Zhang et al.'s and the
later AlexNet benchmarks; "pre_relu" reads them before it) are
average-pooled to a g x g grid with g*g*channels close to `feature_dims`
(~9k, e.g. conv5 6x6x256) and standardised with statistics of the training
features. `bn_stats="probe_images"` first replaces the encoder's BatchNorm
running statistics by those of the probe's training images (AdaBN);
`grayscale=True` probes luma images, for encoders trained colour-blind. One linear
classifier per (layer, L2 weight) is trained by Adam on all layers and all
L2 weights at once from the same batches (softmax cross-entropy, or sigmoid
for multi-label sets); the L2 weight is chosen per layer on a validation
split carved from the training split, and the test score is reported at it.
Feature extraction is jitted and batches are split over all devices, of
all processes with the multi-process flags of `mtssl.cli` (every process
reads every image, fetches all features and trains the same probes; process
0 writes the results).
Features are cached in host memory when they fit in `cache_gb`, else they
are recomputed every epoch.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath

from mtssl.eval.classification import (
    classification_loss,
    mean_average_precision,
    multilabel_accuracy,
)
from mtssl.cli import run_config_command
from mtssl.data import real
from mtssl.data.labeled import make_labeled
from mtssl.data.pipeline import normalize_images
from mtssl.loop import say
from mtssl.mesh import batch_sharding, data_mesh, replicated, same_to_global
from mtssl.pretrained import (
    Encoder,
    adapt_statistics,
    checkpoint_or_random_encoder,
    encoder_forward,
)


def pooled_grid(channels: int, spatial: int, target: int) -> int:
    """Side g of the pooling grid: g*g*channels ~ target, 1 <= g <= spatial."""
    return max(1, min(spatial, round(math.sqrt(target / channels))))


def adaptive_avg_pool(x: jax.Array, g: int) -> jax.Array:
    """(N, H, W, C) -> (N, g, g, C), bin i covering [floor(iH/g), ceil((i+1)H/g))."""
    h, w = x.shape[1:3]
    rows = [(math.floor(i * h / g), math.ceil((i + 1) * h / g)) for i in range(g)]
    cols = [(math.floor(j * w / g), math.ceil((j + 1) * w / g)) for j in range(g)]
    return jnp.stack([jnp.stack([x[:, a:b, c0:c1].mean((1, 2)) for c0, c1 in cols], 1)
                      for a, b in rows], 1)


TAPS = ("post_relu", "pre_relu")
BN_STATS = ("running", "probe_images")


def make_feature_fn(encoder: Encoder, layers: tuple[str, ...], target_dims: int,
                    image_size: int, mesh: jax.sharding.Mesh, taps: str = "post_relu"):
    """Jitted uint8-normalised images (a batch sharded over `mesh`) ->
    {layer: (N, D) pooled features} after (`taps="post_relu"`) or before
    each layer's ReLU, replicated: every process of a multi-process run can
    fetch all of them."""
    deepest = max(layers, key=encoder.layers.index)
    shapes = jax.eval_shape(lambda x: encoder.apply(x, upto=deepest),
                            jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32))
    grids = {name: pooled_grid(shapes[name].shape[-1], min(shapes[name].shape[1:3]),
                               target_dims) for name in layers}

    activation = jax.nn.relu if taps == "post_relu" else (lambda x: x)

    def features(params, stats, images):
        out = encoder_forward(encoder.graphdef, params, stats, images, upto=deepest)
        return {name: adaptive_avg_pool(activation(out[name]), g).reshape(images.shape[0], -1)
                for name, g in grids.items()}

    dims = {name: grids[name] ** 2 * shapes[name].shape[-1] for name in layers}
    return jax.jit(features, out_shardings=replicated(mesh)), dims


def _split_indices(n: int, val_fraction: float, limit: int, seed: int):
    """(train, val) indices of a training split, by a stable hash of (seed, i)."""
    def in_val(i):
        h = hashlib.sha1(f"{seed}:{i}".encode()).digest()
        return int.from_bytes(h[:8], "little") / 2**64 < val_fraction
    idx = np.arange(n if limit <= 0 else min(n, limit))
    val = np.array([in_val(i) for i in idx], bool)
    return idx[~val], idx[val]


def to_luma(images: np.ndarray) -> np.ndarray:
    """uint8 RGB (..., 3) -> its ITU-R 601 luma in all three channels."""
    luma = np.rint(images.astype(np.float32) @ np.float32([0.299, 0.587, 0.114]))
    return np.repeat(luma.astype(np.uint8)[..., None], 3, -1)


def image_batches(source, indices, batch_size: int, sharding, grayscale: bool = False):
    """(normalised images as a global array, labels, count) for `indices` of
    a labelled source in batches of `batch_size`, the last one padded by
    repeating its last image (fixed shapes: one compile)."""
    for start in range(0, len(indices), batch_size):
        idx = indices[start:start + batch_size]
        records = [source[int(i)] for i in idx]
        images = np.stack([r["image"] for r in records])
        labels = np.stack([r["label"] for r in records])
        pad = batch_size - len(idx)
        if pad:
            images = np.concatenate([images, np.repeat(images[-1:], pad, 0)])
        if grayscale:
            images = to_luma(images)
        yield same_to_global(normalize_images(images), sharding), labels, len(idx)


class FeatureSet:
    """Batches of (features, labels) of a source's `indices`, computed by
    `feature_fn` on demand, optionally kept in host memory after the first pass."""

    def __init__(self, source, indices, feature_fn, params, stats, batch_size, sharding,
                 cache: bool, grayscale: bool = False):
        self.source, self.indices = source, np.asarray(indices)
        self.feature_fn, self.params, self.stats = feature_fn, params, stats
        self.batch_size, self.sharding, self.cache = batch_size, sharding, cache
        self.grayscale = grayscale
        self._cached: list | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def batches(self, shuffle_rng: np.random.Generator | None = None):
        if self._cached is not None:
            order = (shuffle_rng.permutation(len(self._cached)) if shuffle_rng is not None
                     else range(len(self._cached)))
            for i in order:
                yield self._cached[i]
            return
        out = []
        for x, labels, count in image_batches(self.source, self.indices, self.batch_size,
                                              self.sharding, self.grayscale):
            feats = jax.device_get(self.feature_fn(self.params, self.stats, x))
            item = ({k: v[:count] for k, v in feats.items()}, labels)
            if self.cache:
                out.append(item)
            yield item
        if self.cache:
            self._cached = out


def _standardizer(features: FeatureSet, max_batches: int = 50):
    sums, sq, count = {}, {}, 0
    for i, (feats, _) in enumerate(features.batches()):
        for k, v in feats.items():
            sums[k] = sums.get(k, 0.0) + v.sum(0, dtype=np.float64)
            sq[k] = sq.get(k, 0.0) + (v.astype(np.float64) ** 2).sum(0)
        count += len(next(iter(feats.values())))
        if i + 1 >= max_batches and not features.cache:
            break
    mean = {k: (s / count).astype(np.float32) for k, s in sums.items()}
    std = {k: np.sqrt(np.maximum(sq[k] / count - (sums[k] / count) ** 2, 0)).astype(
        np.float32) + 1e-5 for k in sums}
    return mean, std


def train_probes(train: FeatureSet, dims: dict[str, int], num_classes: int,
                 multilabel: bool, config, mean, std):
    """Adam on every (layer, l2) classifier at once; returns params."""
    l2 = jnp.asarray(config.l2, jnp.float32)
    n_l2 = len(config.l2)
    params = {k: {"w": jnp.zeros((n_l2, d, num_classes)), "b": jnp.zeros((n_l2, num_classes))}
              for k, d in dims.items()}
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    schedule = optax.cosine_decay_schedule(config.learning_rate,
                                           config.epochs * steps_per_epoch)
    tx = optax.adam(schedule)
    opt_state = tx.init(params)

    def loss_fn(params, feats, labels):
        total = 0.0
        for k, p in params.items():
            x = (feats[k] - mean[k]) / std[k]
            logits = jnp.einsum("nd,ldc->lnc", x, p["w"]) + p["b"][:, None]
            ce = classification_loss(logits, labels, multilabel)     # (n_l2,)
            total = total + jnp.sum(ce + l2 * jnp.sum(p["w"] ** 2, (1, 2)))
        return total

    @jax.jit
    def update(params, opt_state, feats, labels):
        loss, grads = jax.value_and_grad(loss_fn)(params, feats, labels)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(config.seed)
    for epoch in range(config.epochs):
        start, losses = time.perf_counter(), []
        for feats, labels in train.batches(rng):
            params, opt_state, loss = update(params, opt_state, feats, labels)
            losses.append(loss)
        say(f"probe epoch {epoch + 1}/{config.epochs}: loss "
            f"{float(np.mean(jax.device_get(losses))):.4f} ({time.perf_counter() - start:.1f} s)")
    return params


def evaluate_probes(params, features: FeatureSet, multilabel: bool, mean, std):
    """{layer: per-l2 scores}: accuracy (and mAP for multi-label)."""
    scores = {k: [] for k in params}
    labels = []

    @jax.jit
    def logits_fn(params, feats):
        return {k: jnp.einsum("nd,ldc->lnc", (feats[k] - mean[k]) / std[k], p["w"])
                + p["b"][:, None] for k, p in params.items()}

    for feats, y in features.batches():
        out = jax.device_get(logits_fn(params, feats))
        for k in params:
            scores[k].append(out[k])
        labels.append(y)
    labels = np.concatenate(labels)
    results = {}
    for k in params:
        s = np.concatenate(scores[k], axis=1)        # (n_l2, N, C)
        if multilabel:
            acc = [multilabel_accuracy(s[i], labels) for i in range(len(s))]
            maps = [mean_average_precision(s[i], labels) for i in range(len(s))]
            results[k] = {"accuracy": acc, "map": maps}
        else:
            results[k] = {"accuracy": [float((s[i].argmax(-1) == labels).mean())
                                       for i in range(len(s))]}
    return results


def validate(config: ml_collections.ConfigDict) -> None:
    """Stops a bad probe config before any encoder is loaded or compiled,
    naming the valid values."""
    choices = (("taps", TAPS), ("bn_stats", BN_STATS), ("crop", real.CROPS))
    for name, valid in choices:
        if config[name] not in valid:
            raise ValueError(f"config.{name}={config[name]!r} is not valid; choose one of: "
                             f"{', '.join(valid)}")
    if not config.l2 or min(config.l2) < 0:
        raise ValueError(f"config.l2={tuple(config.l2)!r}: give one or more weights >= 0")
    if not 0 < config.val_fraction < 1:
        raise ValueError(f"config.val_fraction={config.val_fraction}: it must be in (0, 1)")
    for name in ("batch_size", "epochs", "feature_dims"):
        if config[name] < 1:
            raise ValueError(f"config.{name}={config[name]}: it must be >= 1")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs the probes and writes probe.json / probe.md / probe_run.json."""
    validate(config)
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    encoder = checkpoint_or_random_encoder(config.checkpoint, config.model, config.seed)
    layers = tuple(config.layers)
    unknown = [name for name in layers if name not in encoder.layers]
    if unknown or not layers:
        raise ValueError(f"config.layers={layers!r}: choose from {', '.join(encoder.layers)}")
    protocol = {"taps": config.taps, "bn_stats": config.bn_stats,
                "grayscale": bool(config.grayscale)}
    image_size = config.image_size or encoder.config.image_size
    if config.batch_size % jax.device_count():
        raise ValueError(f"batch_size={config.batch_size} does not divide over "
                         f"{jax.device_count()} devices")

    common = dict(resolution=image_size, seed=config.seed, crop=config.crop,
                  data_dir=config.data_dir or None, num_records=config.photos_per_split)
    train_source = make_labeled(config.dataset, config.train_split, **common)
    test_source = make_labeled(config.dataset, config.test_split, **common)
    multilabel = train_source.multilabel
    num_classes = len(train_source.class_names)

    mesh = data_mesh()
    sharding = batch_sharding(mesh)
    feature_fn, dims = make_feature_fn(encoder, layers, config.feature_dims, image_size,
                                       mesh, config.taps)
    train_idx, val_idx = _split_indices(len(train_source), config.val_fraction,
                                        config.max_train_examples, config.seed)
    if config.bn_stats == "probe_images":
        # Full batches only: a padded one would count its repeated image twice.
        full = max(config.batch_size, len(train_idx) // config.batch_size * config.batch_size)
        encoder = adapt_statistics(encoder, (x for x, _, _ in image_batches(
            train_source, train_idx[:full], config.batch_size, sharding, config.grayscale)))
    test_idx = np.arange(len(test_source) if config.max_test_examples <= 0
                         else min(len(test_source), config.max_test_examples))
    per_example_gb = sum(dims.values()) * 4 / 1e9
    cache = bool(config.cache_gb > 0 and per_example_gb * len(train_idx) <= config.cache_gb)
    sets = [FeatureSet(src, idx, feature_fn, encoder.params, encoder.stats,
                       config.batch_size, sharding, cache, config.grayscale)
            for src, idx in ((train_source, train_idx), (train_source, val_idx),
                             (test_source, test_idx))]
    train, val, test = sets
    say(f"probing {config.checkpoint or 'random init'} on {config.dataset}: {len(train)} "
        f"train / {len(val)} val / {len(test)} test, {num_classes} classes, dims {dims}")

    start = time.perf_counter()
    mean, std = _standardizer(train)
    params = train_probes(train, dims, num_classes, multilabel, config, mean, std)
    val_scores = evaluate_probes(params, val, multilabel, mean, std)
    test_scores = evaluate_probes(params, test, multilabel, mean, std)
    metric = "map" if multilabel else "accuracy"
    results = {}
    for name in layers:
        best = int(np.argmax(val_scores[name][metric]))
        results[name] = {"accuracy": test_scores[name]["accuracy"][best],
                         "val_accuracy": val_scores[name]["accuracy"][best],
                         "l2": float(config.l2[best]), "dims": int(dims[name]),
                         "protocol": protocol}
        if multilabel:
            results[name]["map"] = test_scores[name]["map"][best]
            results[name]["val_map"] = val_scores[name]["map"][best]
    elapsed = time.perf_counter() - start

    if jax.process_index() == 0:
        (workdir / "probe.json").write_text(json.dumps(results, indent=1))
        (workdir / "probe_run.json").write_text(json.dumps({
            "checkpoint": config.checkpoint, "checkpoint_step": encoder.step,
            "dataset": config.dataset, "classes": list(train_source.class_names),
            "train_examples": len(train), "val_examples": len(val),
            "test_examples": len(test), "image_size": image_size, "protocol": protocol,
            "seconds": elapsed, "config": config.to_dict()}, indent=1, default=str))
        (workdir / "probe.md").write_text(markdown_table(results, config, multilabel))
        print(markdown_table(results, config, multilabel), flush=True)
    return results


def markdown_table(results: dict, config, multilabel: bool) -> str:
    head = "| layer | dims | L2 | val acc | test acc |" + (" test mAP |" if multilabel else "")
    rule = "|---|---|---|---|---|" + ("---|" if multilabel else "")
    lines = [f"Linear probes: {config.checkpoint or 'random init'} on {config.dataset} "
             f"({config.taps} taps, {config.bn_stats} BatchNorm statistics, "
             f"{'grayscale' if config.grayscale else 'colour'} images)", "", head, rule]
    for name, r in results.items():
        line = (f"| {name} | {r['dims']} | {r['l2']:g} | {100 * r['val_accuracy']:.1f} | "
                f"{100 * r['accuracy']:.1f} |")
        if multilabel:
            line += f" {100 * r['map']:.1f} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    run_config_command(run, "Probe config (configs/linear_probe.py).")
