"""Using a trained network outside the training loop.

    from mtssl.pretrained import load_encoder, load_predictor
    encoder = load_encoder("runs/local")          # a pretraining workdir
    feats = encoder.features(images_uint8)        # {"conv1": ..., ..., "fc7": ...}
    predict = load_predictor("runs/local")        # encoder + task heads
    maps = predict(images_uint8)                  # {"depth": metres, "normals", "contours", ...}

`load_encoder(path)` and `load_predictor(path)` accept a pretraining
workdir, its `checkpoints/` folder, or one step folder `checkpoints/<step>`;
the network is rebuilt from the config saved with the checkpoint (an
encoder keeps only the encoder's parameters and BatchNorm statistics).
`random_encoder(config)` is the untrained baseline with the same
architecture. Features are computed in
inference mode (BatchNorm running statistics), before the ReLU, from uint8
images normalised as in training (/255 minus the ImageNet mean).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from flax import nnx

from mtssl import checkpointing, steps
from mtssl.config import defaults
from mtssl.data.pipeline import normalize_images
from mtssl.mesh import data_mesh, replicated
from mtssl.models import encoder_taps


@dataclasses.dataclass
class Encoder:
    """A frozen encoder: graph definition + parameters + BN statistics."""

    graphdef: Any
    params: Any
    stats: Any
    config: ml_collections.ConfigDict    # the pretraining config it came from
    step: int | None = None              # checkpoint step (None: random init)
    _compiled: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def layers(self) -> tuple[str, ...]:
        return encoder_taps(self.config.model.encoder)

    def apply(self, images: jax.Array, upto: str | None = None) -> dict[str, jax.Array]:
        """Pure function of float images (already normalised): named taps.
        Jit it, or use `features`."""
        return encoder_forward(self.graphdef, self.params, self.stats, images, upto)

    def features(self, images: np.ndarray, upto: str | None = None) -> dict[str, np.ndarray]:
        """uint8 (N, H, W, 3) images -> {layer: (N, h, w, c) numpy}."""
        if upto not in self._compiled:
            self._compiled[upto] = jax.jit(functools.partial(
                encoder_forward, self.graphdef, upto=upto))
        out = self._compiled[upto](self.params, self.stats,
                                   normalize_images(np.asarray(images)))
        return jax.device_get(out)


def adapt_statistics(encoder: Encoder, batches) -> Encoder:
    """AdaBN (Li et al. 2016): `encoder` with every BatchNorm's running
    statistics replaced by the mean and variance of its input over all of
    `batches` (normalised float image arrays of one shape), each layer
    normalised by batch statistics on the way, as in training."""
    if encoder.config.model.norm != "batch":
        raise ValueError("recomputing BatchNorm statistics needs a BatchNorm encoder, "
                         f"not model.norm={encoder.config.model.norm!r}")

    def batch_norms(model):
        return [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm)]

    @jax.jit
    def moments(params, stats, images):
        """Per BatchNorm: (batch mean, batch second moment) of its input."""
        model = nnx.merge(encoder.graphdef, params, stats, copy=True)
        model.train()
        for norm in batch_norms(model):
            norm.momentum = 0.0               # running statistics := this batch's
        model(images)
        for norm in batch_norms(model):
            norm.var[...] = norm.var[...] + jnp.square(norm.mean[...])
        return nnx.state(model, nnx.BatchStat)

    total, count = None, 0
    for images in batches:
        m = jax.device_get(moments(encoder.params, encoder.stats, images))
        total = m if total is None else jax.tree.map(np.add, total, m)
        count += 1
    if not count:
        raise ValueError("no images to compute BatchNorm statistics from")
    model = nnx.merge(encoder.graphdef, encoder.params,
                      jax.tree.map(lambda x: x / count, total), copy=True)
    for norm in batch_norms(model):
        norm.var[...] = jnp.maximum(norm.var[...] - jnp.square(norm.mean[...]), 0.0)
    return dataclasses.replace(encoder, stats=nnx.state(model, nnx.BatchStat),
                               _compiled={})


def encoder_forward(graphdef, params, stats, images: jax.Array,
                    upto: str | None = None) -> dict[str, jax.Array]:
    """Inference-mode taps of an encoder given as (graphdef, params, stats)."""
    encoder = nnx.merge(graphdef, params, stats, copy=True)
    encoder.eval()
    taps = encoder(images, upto=upto)
    return {k: v.astype(jnp.float32) for k, v in taps.items()}   # bf16 models too


def _encoder_parts(config, static, state, step: int | None) -> Encoder:
    net = nnx.merge(static.g_def, state.g_params, state.g_stats, copy=True)
    graphdef, params, stats = nnx.split(net.encoder, nnx.Param, nnx.BatchStat)
    return Encoder(graphdef, params, stats, config, step)


def _checkpoint_root(path: epath.Path) -> tuple[epath.Path, int | None]:
    """(checkpoints root, step or None for the latest) from any accepted path."""
    if (path / "checkpoints").is_dir():
        return path / "checkpoints", None
    if path.name.isdigit() and (path / "state").is_dir():
        return path.parent, int(path.name)
    return path, None


def load_run(path: str | epath.Path, step: int | None = None):
    """(config, steps.Static, TrainState, step) of a checkpoint: `path` as in
    `load_encoder`; `step` overrides the one the path names (default: the
    latest). The state is replicated over this process's devices, so runs
    saved on other hardware (a pod, several processes) load anywhere."""
    root, named = _checkpoint_root(epath.Path(path))
    with checkpointing.RunCheckpoints(root) as ckpt:
        step = step if step is not None else (
            named if named is not None else ckpt.latest_step())
        if step is None:
            raise FileNotFoundError(f"no checkpoint found in {path}")
        config = ckpt.config(step)
        static, init = steps.create(config, config.image_size, jax.random.key(0))
        # Onto this machine's devices, whatever the devices it was saved from.
        abstract = jax.eval_shape(init, jax.random.key(0))
        everywhere = jax.tree.map(lambda _: replicated(data_mesh()), abstract)
        state = ckpt.restore(checkpointing.abstract_with_sharding(abstract, everywhere),
                             step=step)
    return config, static, state, step


def load_encoder(path: str | epath.Path) -> Encoder:
    """The encoder of a pretraining checkpoint (see module docstring)."""
    config, static, state, step = load_run(path)
    return _encoder_parts(config, static, state, step)


def load_predictor(path: str | epath.Path, step: int | None = None
                   ) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """The whole trained network of a checkpoint as a function of uint8
    (N, H, W, 3) images (any size the encoder takes; the training crop size
    is `config.image_size`) -> numpy maps at image resolution: "depth" in
    metres (N, H, W), "normals" camera-frame unit vectors (N, H, W, 3),
    "contours" probabilities (N, H, W), "semantics" class indices into
    `scenes.SEMANTIC_CLASSES` (N, H, W); one entry per task it was trained on."""
    _, static, state, _ = load_run(path, step)
    predict = jax.jit(functools.partial(steps.predict, static=static))

    def predictor(images: np.ndarray) -> dict[str, np.ndarray]:
        maps = jax.device_get(predict(state, normalize_images(np.asarray(images))))
        if "depth" in maps:
            maps["depth"] = np.exp(maps["depth"])
        if "contours" in maps:
            maps["contours"] = 1.0 / (1.0 + np.exp(-maps["contours"]))
        if "semantics" in maps:
            maps["semantics"] = maps["semantics"].argmax(-1).astype(np.int32)
        return maps

    return predictor


def random_encoder(config: ml_collections.ConfigDict | None = None,
                   seed: int = 0) -> Encoder:
    """A randomly initialised encoder (the baseline of every probe). Its
    BatchNorm running statistics are the initial ones (mean 0, var 1)."""
    config = config or defaults()
    static, init = steps.create(config, config.image_size, jax.random.key(seed))
    return _encoder_parts(config, static, steps.initial_state(init, jax.random.key(seed)), None)


def checkpoint_or_random_encoder(checkpoint: str, model: ml_collections.ConfigDict,
                                 seed: int) -> Encoder:
    """The encoder of `checkpoint`, or for "" a random one with the default
    pretraining config's `model` fields updated by `model` (the baseline an
    evaluation compares against)."""
    if checkpoint:
        return load_encoder(checkpoint)
    config = defaults()
    config.model.update(dict(model))
    return random_encoder(config, seed=seed)
