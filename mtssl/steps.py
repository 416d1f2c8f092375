"""The training state and the jitted train step: adversarial multi-task learning.

One step, one compiled function (see `train_step`):
  1. The encoder runs on the synthetic batch and, separately, on the real
     batch, so BatchNorm normalises each domain with its own statistics.
  2. Discriminator update (its own optimizer state) on stop-gradient features
     of the adapted layer, drawn through two feature pools (CycleGAN-style
     history buffers, one per domain).
  3. Encoder + heads update (their own optimizer state) on the task losses
     plus the adversarial term through the *updated* discriminator: synthetic
     features should look real.
The synthetic forward pass is shared by 2 and 3 (`jax.vjp`): the features D
trains on are the ones G is updated through, as in the reference.

Invariants: the state is one pytree of arrays (checkpointable, shardable);
everything static (graph definitions, optimizers, loss settings) is bound
before `jax.jit`; D's loss never reaches G's parameters (stop-gradient), and
G's update never changes D's parameters.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mtssl import losses
from mtssl.config import tasks_of
from mtssl.loop import release_free_host_memory
from mtssl.models import (
    MultiTaskNet,
    PatchDiscriminator,
    encoder_taps,
    set_compute_dtype,
)


@flax.struct.dataclass
class FeaturePool:
    """A fixed-size history of feature maps (CycleGAN's image pool).

    Until full, queried features are stored and returned as they are; once
    full, each queried feature is, with probability 1/2, swapped for a random
    stored one (which it replaces), else returned as is.
    """

    features: jax.Array   # (size, h, w, c)
    count: jax.Array      # () int32, number of filled slots

    @classmethod
    def empty(cls, size: int, shape: tuple[int, ...], dtype=jnp.float32):
        return cls(jnp.zeros((size, *shape), dtype), jnp.zeros((), jnp.int32))

    def query(self, batch: jax.Array, key: jax.Array):
        """Returns (features for D, updated pool); one element at a time."""
        size = self.features.shape[0]

        def one(pool, args):
            x, k = args
            k_swap, k_slot = jax.random.split(k)
            full = pool.count >= size
            swap = full & jax.random.bernoulli(k_swap)
            slot = jnp.where(full, jax.random.randint(k_slot, (), 0, size), pool.count)
            out = jnp.where(swap, pool.features[slot], x)
            store = ~full | swap
            features = pool.features.at[slot].set(
                jnp.where(store, x, pool.features[slot]))
            return FeaturePool(features, jnp.minimum(pool.count + 1, size)), out

        keys = jax.random.split(key, batch.shape[0])
        pool, out = jax.lax.scan(one, self, (batch, keys))
        return out, pool


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    rng: jax.Array                 # typed PRNG key for the pools
    g_params: Any                  # encoder + heads, nnx.Param state
    g_stats: Any                   # their BatchNorm statistics (nnx.BatchStat)
    d_params: Any
    d_stats: Any
    g_opt: optax.OptState
    d_opt: optax.OptState
    pool_synthetic: FeaturePool
    pool_real: FeaturePool


@dataclasses.dataclass(frozen=True)
class Static:
    """Everything the step needs that is not an array (bound before jit)."""

    g_def: Any
    d_def: Any
    g_tx: optax.GradientTransformation
    d_tx: optax.GradientTransformation
    tasks: tuple[str, ...]
    weights: tuple[tuple[str, float], ...]   # task or "adversarial" -> weight
    adapt_layer: str
    domain_adaptation: bool
    joint_disc_batch: bool     # D normalises both domains as one batch
    depth_variant: str
    contour_weighting: str
    gan: str
    g_lr: optax.Schedule       # G's learning rate per step (for logging)
    # On-device rendering: batch["synthetic"] (indices, crops, channel) ->
    # the synthetic batch (`data.pipeline.render_on_device`, bound); or None.
    render_synthetic: Any = None


def _schedule(lr: float, boundaries, factor: float) -> optax.Schedule:
    return optax.piecewise_constant_schedule(lr, {int(b): factor for b in boundaries})


def make_optimizers(optim, steps_per_epoch: int, total_steps: int = 1):
    """G: Adam (lr 1e-3, betas 0.5/0.999); D: SGD momentum 0.9 (or, with
    `d_optimizer="adam"`, Adam with G's betas) with weight decay 5e-4 added
    to the gradient (PyTorch semantics). Both decay by
    `lr_decay_factor` at each of `lr_decay_epochs` (the schedule the
    reference defined but never applied) and of `lr_decay_fractions` of
    `total_steps`. Returns (g_tx, d_tx, g_schedule)."""
    # .get: runs saved before lr_decay_fractions existed load without it.
    boundaries = ([round(e * steps_per_epoch) for e in optim.lr_decay_epochs]
                  + [round(f * total_steps) for f in optim.get("lr_decay_fractions", ())])
    g_schedule = _schedule(optim.g_lr, boundaries, optim.lr_decay_factor)
    g_tx = optax.adam(g_schedule, b1=optim.g_b1, b2=optim.g_b2)
    d_schedule = _schedule(optim.d_lr, boundaries, optim.lr_decay_factor)
    d_solver = (optax.adam(d_schedule, b1=optim.g_b1, b2=optim.g_b2)
                if optim.d_optimizer == "adam"
                else optax.sgd(d_schedule, momentum=optim.d_momentum))
    d_tx = optax.chain(optax.add_decayed_weights(optim.d_weight_decay), d_solver)
    return g_tx, d_tx, g_schedule


def _split(module):
    graphdef, params, stats = nnx.split(module, nnx.Param, nnx.BatchStat)
    return graphdef, params, stats


def create(config, image_size: int, key: jax.Array, steps_per_epoch: int = 1,
           total_steps: int = 1):
    """Builds (Static, init_fn). init_fn(key) -> TrainState, pure and jittable.

    config: the pretraining ConfigDict (`mtssl.config.defaults()`); only its
    `model`, `loss`, `optim` and `da` sections are read here.
    steps_per_epoch, total_steps: turn `optim.lr_decay_epochs` and
    `optim.lr_decay_fractions` into steps (only training needs them).
    """
    m = config.model
    adapt = m.adapt_layer
    taps = encoder_taps(m.encoder)
    if adapt not in taps:
        raise ValueError(f"unknown adapt_layer {adapt!r}; valid: {', '.join(taps)}")
    tasks = tasks_of(config)
    compute_dtype = jnp.dtype(m.get("dtype", "float32"))

    def build(key):
        k_g, k_d = jax.random.split(key)
        net = MultiTaskNet(tasks=tasks, encoder=m.encoder, width=m.width, norm=m.norm,
                           head_channels=m.head_channels, rngs=nnx.Rngs(k_g))
        disc = PatchDiscriminator(net.encoder.channels[adapt], width=m.disc_width,
                                  norm=m.norm, rngs=nnx.Rngs(k_d))
        if compute_dtype != jnp.float32:
            set_compute_dtype(net, compute_dtype)
            set_compute_dtype(disc, compute_dtype)
        return net, disc

    abstract_net, abstract_disc = nnx.eval_shape(lambda: build(key))
    g_def = _split(abstract_net)[0]
    d_def = _split(abstract_disc)[0]
    feature_shape = jax.eval_shape(
        lambda k: build(k)[0].encoder(jnp.zeros((2, image_size, image_size, 3)))[adapt],
        key).shape[1:]
    g_tx, d_tx, g_schedule = make_optimizers(config.optim, steps_per_epoch, total_steps)
    weights = tuple((t, float(config.loss.weights[t])) for t in tasks) + (
        ("adversarial", float(config.loss.weights.adversarial)),)
    static = Static(g_def=g_def, d_def=d_def, g_tx=g_tx, d_tx=d_tx, tasks=tasks,
                    weights=weights, adapt_layer=adapt,
                    domain_adaptation=bool(config.da.enabled),
                    joint_disc_batch=config.da.disc_batch == "joint",
                    depth_variant=config.loss.depth_variant,
                    contour_weighting=config.loss.contour_weighting,
                    gan=config.loss.gan, g_lr=g_schedule)

    def init(key: jax.Array) -> TrainState:
        k_model, k_rng = jax.random.split(key)
        net, disc = build(k_model)
        _, g_params, g_stats = _split(net)
        _, d_params, d_stats = _split(disc)
        pool = FeaturePool.empty(config.da.pool_size, feature_shape)
        return TrainState(
            step=jnp.zeros((), jnp.int32), rng=k_rng,
            g_params=g_params, g_stats=g_stats, d_params=d_params, d_stats=d_stats,
            g_opt=g_tx.init(g_params), d_opt=d_tx.init(d_params),
            pool_synthetic=pool, pool_real=pool)

    return static, init


def initial_state(init, key: jax.Array, out_shardings=None) -> TrainState:
    """`init(key)` (from `create`), compiled, run once, and its program let go.

    A run never calls the initialiser again, but jit would keep its program
    and trace for the life of the process: on CPU ~100 MB for runlocal, a sixth
    of its step's peak memory (docs/performance.md). The persistent compilation
    cache still has it for the next run.
    """
    make = jax.jit(init, out_shardings=out_shardings)
    state = make(key)
    make.clear_cache()
    release_free_host_memory()
    return state


def task_losses(preds, batch, static: Static) -> dict[str, jax.Array]:
    """Per-task losses of predictions against a synthetic batch.

    batch: `depth` (N, H, W) metres (0 = invalid), `normals` (N, H, W, 3),
    `contours` (N, H, W) bool, `semantics` (N, H, W) int classes; invalid
    depth masks depth and normals, unlabelled pixels the semantics.
    """
    valid = batch["depth"] > 0
    out = {}
    if "depth" in preds:
        target = losses.depth_target(jnp.where(valid, batch["depth"], 1.0))
        out["depth"] = losses.depth_loss(preds["depth"], target, valid,
                                         static.depth_variant)
    if "normals" in preds:
        out["normals"] = losses.normals_loss(preds["normals"], batch["normals"], valid)
    if "contours" in preds:
        out["contours"] = losses.contour_loss(preds["contours"], batch["contours"],
                                              weighting=static.contour_weighting)
    if "semantics" in preds:
        out["semantics"] = losses.semantic_loss(preds["semantics"], batch["semantics"])
    return out


def _discriminate(disc, synthetic, real, static: Static):
    """D's logits on both domains: two passes (per-domain batch statistics)
    or, with `static.joint_disc_batch`, one pass over both."""
    if not static.joint_disc_batch:
        return disc(synthetic), disc(real)
    logits = disc(jnp.concatenate([synthetic, real.astype(synthetic.dtype)]))
    return logits[:synthetic.shape[0]], logits[synthetic.shape[0]:]


def train_step(state: TrainState, batch, *, static: Static):
    """One D update then one G update. batch: {"synthetic": {...}, "real": {...}}
    with float `image`s (N, H, W, 3) already normalised (or, with
    `static.render_synthetic`, the synthetic part still to be rendered).
    Returns (state, metrics)."""
    if static.render_synthetic is not None:
        batch = {**batch, "synthetic": static.render_synthetic(batch["synthetic"])}
    weights = dict(static.weights)
    key_syn, key_real, next_rng = jax.random.split(state.rng, 3)

    def g_forward(g_params, images, g_stats):
        model = nnx.merge(static.g_def, g_params, g_stats, copy=True)
        taps, preds = model(images)
        return (taps[static.adapt_layer], preds), nnx.state(model, nnx.BatchStat)

    # Synthetic forward once; its vjp carries G's gradient later.
    (feat_syn, preds), vjp_fn, g_stats = jax.vjp(
        lambda p: g_forward(p, batch["synthetic"]["image"], state.g_stats),
        state.g_params, has_aux=True)
    metrics = {}
    d_params, d_stats, d_opt = state.d_params, state.d_stats, state.d_opt
    pool_syn, pool_real = state.pool_synthetic, state.pool_real
    if static.domain_adaptation:
        # The real domain's pass only feeds D (and the encoder's BatchNorm
        # statistics up to the adapted layer): no heads, no layers above it.
        model = nnx.merge(static.g_def, state.g_params, g_stats, copy=True)
        feat_real = model.encoder(batch["real"]["image"],
                                  upto=static.adapt_layer)[static.adapt_layer]
        g_stats = nnx.state(model, nnx.BatchStat)
        d_in_syn, pool_syn = pool_syn.query(jax.lax.stop_gradient(feat_syn), key_syn)
        d_in_real, pool_real = pool_real.query(jax.lax.stop_gradient(feat_real),
                                               key_real)

        def d_loss_fn(d_params, d_stats):
            disc = nnx.merge(static.d_def, d_params, d_stats, copy=True)
            logits_syn, logits_real = _discriminate(disc, d_in_syn, d_in_real, static)
            loss = losses.discriminator_loss(logits_syn, logits_real, static.gan)
            acc = losses.discriminator_accuracy(logits_syn, logits_real, static.gan)
            return loss, (acc, nnx.state(disc, nnx.BatchStat))

        (d_loss, (d_acc, d_stats)), d_grads = jax.value_and_grad(
            d_loss_fn, has_aux=True)(d_params, d_stats)
        updates, d_opt = static.d_tx.update(d_grads, d_opt, d_params)
        d_params = optax.apply_updates(d_params, updates)
        metrics.update(d_loss=d_loss, d_accuracy=d_acc)

    def g_loss_fn(feat, preds):
        per_task = task_losses(preds, batch["synthetic"], static)
        total = sum(weights[t] * v for t, v in per_task.items())
        if static.domain_adaptation:
            # Through the updated D, whose statistics stay as they are: D is
            # only read here.
            disc = nnx.merge(static.d_def, d_params, d_stats, copy=True)
            logits_syn, _ = _discriminate(disc, feat, d_in_real, static)
            adv = losses.adversarial_loss(logits_syn, static.gan)
            per_task["adversarial"] = adv
            total = total + weights["adversarial"] * adv
        return total, per_task

    (g_loss, per_task), (d_feat, d_preds) = jax.value_and_grad(
        g_loss_fn, argnums=(0, 1), has_aux=True)(feat_syn, preds)
    (g_grads,) = vjp_fn((d_feat, d_preds))
    updates, g_opt = static.g_tx.update(g_grads, state.g_opt, state.g_params)
    g_params = optax.apply_updates(state.g_params, updates)

    metrics.update({f"loss/{k}": v for k, v in per_task.items()})
    metrics.update(g_loss=g_loss, g_grad_norm=optax.tree.norm(g_grads),
                   g_lr=static.g_lr(state.step))
    new_state = state.replace(
        step=state.step + 1, rng=next_rng, g_params=g_params, g_stats=g_stats,
        d_params=d_params, d_stats=d_stats, g_opt=g_opt, d_opt=d_opt,
        pool_synthetic=pool_syn, pool_real=pool_real)
    return new_state, metrics


def predict(state: TrainState, images: jax.Array, *, static: Static):
    """Inference-mode predictions (BatchNorm with its running statistics)."""
    model = nnx.merge(static.g_def, state.g_params, state.g_stats, copy=True)
    model.eval()
    return model(images)[1]


def compile_step(static: Static, mesh: jax.sharding.Mesh, abstract_state):
    """jit(train_step) over a ('data',) mesh: the batch is split along 'data',
    the state is replicated and donated."""
    replicated = jax.NamedSharding(mesh, jax.P())
    data = jax.NamedSharding(mesh, jax.P("data"))
    state_sharding = jax.tree.map(lambda _: replicated, abstract_state)
    step = jax.jit(functools.partial(train_step, static=static),
                   in_shardings=(state_sharding, data),
                   out_shardings=(state_sharding, replicated),
                   donate_argnums=(0,))
    return step, state_sharding, data
