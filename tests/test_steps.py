"""The train step: pools, separate optimizers, stop-gradient, learning, sharding."""

import dataclasses
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers import ROOT, step_config

from mtssl import steps

RES = 64


@pytest.fixture(scope="module")
def batch(source):
    syn = source.render_batch(np.arange(4))
    real = source.render_batch(np.arange(100, 104))  # stands in for photos
    image = lambda b: jnp.asarray(b["image"], jnp.float32) / 127.5 - 1.0
    return {"synthetic": {"image": image(syn), "depth": jnp.asarray(syn["depth"]),
                          "normals": jnp.asarray(syn["normals"]),
                          "contours": jnp.asarray(syn["contours"])},
            "real": {"image": image(real)}}


def run(config, batch, n_steps, seed=0, steps_per_epoch=1):
    """(final state, per-step metrics, per-step mean |change| of G's params)."""
    static, init = steps.create(config, RES, jax.random.key(seed), steps_per_epoch)
    state = jax.jit(init)(jax.random.key(seed))
    step = jax.jit(lambda s, b: steps.train_step(s, b, static=static))
    history, moves = [], []
    for _ in range(n_steps):
        before = jax.device_get(state.g_params)
        state, metrics = step(state, batch)
        history.append(jax.device_get(metrics))
        moves.append(np.mean([np.abs(a - b).mean() for a, b in zip(
            jax.tree.leaves(before), jax.tree.leaves(jax.device_get(state.g_params)))]))
    return state, history, moves


# Runs several tests read (one compiled step each).
@pytest.fixture(scope="module")
def default_run(batch):
    return run(step_config(), batch, 25)


@pytest.fixture(scope="module")
def no_da_run(batch):
    """Without DA, with learning-rate decays at epochs 1 and 1.5 of 2 steps."""
    cfg = step_config(**{"optim.lr_decay_epochs": (1.0, 1.5), "da.enabled": False})
    return run(cfg, batch, 4, steps_per_epoch=2)


def _changed(a, b):
    return any(not np.array_equal(x, y) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_feature_pool_fills_then_swaps_half():
    pool = steps.FeaturePool.empty(4, (1,))
    first = jnp.arange(4.0).reshape(4, 1)
    out, pool = pool.query(first, jax.random.key(0))
    np.testing.assert_array_equal(out, first)           # filling: pass through
    assert int(pool.count) == 4
    np.testing.assert_array_equal(pool.features, first)
    swapped = 0
    for i in range(20):
        new = jnp.full((4, 1), 100.0 + 4 * i) + jnp.arange(4.0)[:, None]
        before = np.sort(np.asarray(pool.features).ravel())
        out, pool = pool.query(new, jax.random.key(i + 1))
        # Nothing is lost or made up: pool + outputs == old pool + inputs.
        np.testing.assert_array_equal(
            np.sort(np.concatenate([np.asarray(pool.features).ravel(),
                                    np.asarray(out).ravel()])),
            np.sort(np.concatenate([before, np.asarray(new).ravel()])))
        swapped += int(np.sum(np.asarray(out) != np.asarray(new)))
    assert 20 < swapped < 60        # about half of 80 queries


def test_joint_disc_batch_lets_d_see_a_shift_between_the_domains():
    """Per-domain BatchNorm in D (the reference) erases any per-channel offset
    between the domains' features before D's first non-linearity, so D
    scores a shifted real batch exactly as the unshifted one; one joint batch
    keeps the offset visible."""
    from mtssl.models import PatchDiscriminator
    disc = PatchDiscriminator(8, width=1 / 32, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    synthetic, real = (jnp.asarray(rng.normal(size=(4, 5, 5, 8)), jnp.float32)
                       for _ in range(2))
    offset = jnp.asarray(rng.normal(size=(8,)) * 3.0, jnp.float32)
    for joint, moves in ((False, False), (True, True)):
        static = dataclasses.make_dataclass("S", ["joint_disc_batch"])(joint)
        _, plain = steps._discriminate(disc, synthetic, real, static)
        shifted_syn, shifted = steps._discriminate(disc, synthetic, real + offset, static)
        assert shifted_syn.shape == (4, 2, 2)
        change = float(jnp.max(jnp.abs(shifted - plain)))
        assert (change > 0.1) if moves else (change < 1e-4), (joint, change)


def test_initial_state_is_the_initialisers_and_keeps_no_program():
    static, init = steps.create(step_config(), RES, jax.random.key(3))
    traces = []

    def counted(key):
        traces.append(key)
        return init(key)

    def flat(state):
        state = state.replace(rng=jax.random.key_data(state.rng))
        return np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.device_get(state))])

    state = steps.initial_state(counted, jax.random.key(3))
    np.testing.assert_array_equal(flat(state), flat(jax.jit(init)(jax.random.key(3))))
    # jit reuses a function's trace and program across wrappers; a second
    # initialisation tracing again shows the first kept neither.
    steps.initial_state(counted, jax.random.key(3))
    assert len(traces) == 2


def test_each_network_moves_only_under_its_own_loss(batch):
    cfg = step_config()
    for k in ("depth", "normals", "contours", "adversarial"):
        cfg.loss.weights[k] = 0.0
    static, init = steps.create(cfg, RES, jax.random.key(0))
    state0 = jax.jit(init)(jax.random.key(0))
    state1, metrics = jax.jit(lambda s, b: steps.train_step(s, b, static=static))(
        state0, batch)
    # D trained on G's features, yet no gradient of D's loss reached G.
    assert not _changed(state0.g_params, state1.g_params)
    assert _changed(state0.d_params, state1.d_params)
    assert 0.0 <= float(metrics["d_accuracy"]) <= 1.0

    frozen_d = step_config(**{"optim.d_lr": 0.0, "optim.d_weight_decay": 0.0})
    static, init = steps.create(frozen_d, RES, jax.random.key(0))
    state0 = jax.jit(init)(jax.random.key(0))
    state1, _ = jax.jit(lambda s, b: steps.train_step(s, b, static=static))(
        state0, batch)
    assert _changed(state0.g_params, state1.g_params)
    assert not _changed(state0.d_params, state1.d_params)


def test_without_domain_adaptation_there_is_no_discriminator_step(no_da_run):
    state, history, _ = no_da_run
    assert all("d_loss" not in h and "loss/adversarial" not in h for h in history)
    assert int(state.pool_synthetic.count) == 0


def test_task_losses_fall(default_run):
    state, history, _ = default_run
    first, last = history[0], history[-1]
    for task in ("depth", "normals", "contours"):
        assert last[f"loss/{task}"] < 0.9 * first[f"loss/{task}"], task
    assert all(np.isfinite(h["g_loss"]) and np.isfinite(h["d_loss"]) for h in history)
    assert int(jax.device_get(state.step)) == 25


def test_bad_adapt_layer_names_the_choices():
    with pytest.raises(ValueError, match="conv5"):
        steps.create(step_config(**{"model.adapt_layer": "conv6"}), RES,
                     jax.random.key(0))


_SHARDED = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, sys
    sys.path.insert(0, "tests")
    from helpers import step_config
    from mtssl import steps
    assert jax.device_count() == 8
    rng = np.random.default_rng(0)
    n, r = 8, 64
    batch = {"synthetic": {"image": jnp.asarray(rng.normal(size=(n, r, r, 3)), jnp.float32),
                           "depth": jnp.asarray(rng.uniform(1, 5, (n, r, r)), jnp.float32),
                           "normals": jnp.asarray(np.tile([0, 0, -1.0], (n, r, r, 1)), jnp.float32),
                           "contours": jnp.asarray(rng.uniform(size=(n, r, r)) < 0.1)},
             "real": {"image": jnp.asarray(rng.normal(size=(n, r, r, 3)), jnp.float32)}}
    cfg = step_config()
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = jax.sharding.Mesh(np.array(devices), ("data",))
        static, init = steps.create(cfg, r, jax.random.key(0))
        abstract = jax.eval_shape(init, jax.random.key(0))
        step, state_sharding, data_sharding = steps.compile_step(static, mesh, abstract)
        state = jax.jit(init, out_shardings=state_sharding)(jax.random.key(0))
        history = []
        for i in range(3):
            b = jax.device_put(batch, data_sharding)
            assert len(b["real"]["image"].sharding.device_set) == len(devices)
            state, m = step(state, b)
            history.append(jax.device_get(m))
            if i == 0:
                first = jax.device_get((state.g_params, state.d_params))
        results.append((history, first))
    (h1, (g1, d1)), (h8, (g8, d8)) = results
    # Step 1 starts from the same parameters on the same batch: only the
    # order of the reductions over the batch differs (float32 sums over
    # millions of terms: 3e-5 relative on an AVX-512 Xeon's gradient norm).
    for key in h1[0]:
        np.testing.assert_allclose(h8[0][key], h1[0][key], rtol=1e-4, err_msg=key,
                                   atol=0.02 if key == "d_accuracy" else 0)
    # D takes an SGD step: its new parameters are its gradient, to rounding.
    for a, b in zip(jax.tree.leaves(d1), jax.tree.leaves(d8)):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-7)
    # G's first Adam step is lr * g / (|g| + eps): about lr * sign(g), so a
    # weight whose gradient is rounding noise may move either way; all others agree.
    diffs = np.concatenate([np.abs(a - b).ravel() for a, b in
                            zip(jax.tree.leaves(g1), jax.tree.leaves(g8))])
    # (0.12% of them on an AVX-512 Xeon, under 0.1% on AMD EPYC; a sharding
    # bug moves most of them.)
    assert np.mean(diffs > 1e-6) < 5e-3 and diffs.max() <= 2.1e-3, (np.mean(diffs > 1e-6), diffs.max())
    # Later steps: Adam amplifies those weights; the losses stay close.
    for step1, step8 in zip(h1[1:], h8[1:]):
        for key in ("g_loss", "d_loss"):
            np.testing.assert_allclose(step8[key], step1[key], rtol=1e-2, err_msg=key)
    print("OK", np.mean(diffs > 1e-6), diffs.max(), [h["g_loss"] for h in h1], [h["g_loss"] for h in h8])
""")


def test_one_device_and_eight_devices_train_alike(tmp_path):
    """The step on an 8-device mesh is the 1-device step: the first step's
    losses, gradient norm and D update tightly, G's first update up to
    Adam's sign of rounding-level gradients, later losses within 1%."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(
        [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]))
    proc = subprocess.run([sys.executable, "-c", _SHARDED], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "OK" in proc.stdout


def test_lr_schedule_decays_at_the_configured_epochs(no_da_run):
    _, history, moves = no_da_run
    # Steps 0, 1 at 1e-3; x0.1 from step 2 (epoch 1) and again from step 3.
    np.testing.assert_allclose([float(h["g_lr"]) for h in history],
                               [1e-3, 1e-3, 1e-4, 1e-5], rtol=1e-6)
    # And Adam really takes the smaller steps (its step is about lr per weight).
    assert moves[2] < 0.3 * moves[1] and moves[3] < 0.3 * moves[2]


def test_lr_decays_at_fractions_of_the_run_and_at_epochs_together():
    optim = step_config(**{"optim.lr_decay_epochs": (1.0,),
                           "optim.lr_decay_fractions": (0.5, 0.9)}).optim
    _, _, schedule = steps.make_optimizers(optim, steps_per_epoch=10, total_steps=40)
    # Boundaries: epoch 1 = step 10, half of 40 = 20, 0.9 x 40 = 36.
    lrs = [float(schedule(s)) for s in (0, 9, 10, 19, 20, 35, 36, 39)]
    np.testing.assert_allclose(lrs, [1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5, 1e-6, 1e-6],
                               rtol=1e-5)
    from mtssl.config import validate
    with pytest.raises(ValueError, match="lr_decay_fractions"):
        validate(step_config(**{"optim.lr_decay_fractions": (0.6, 1.0)}))


def test_adversarial_gradient_reaches_the_encoder_up_to_the_adapted_layer(batch):
    """The reference shipped with the adversarial term detached; here it must
    move the encoder layers below the adapted one, and nothing above it."""
    cfg = step_config(**{"model.adapt_layer": "conv4"})
    for k in ("depth", "normals", "contours"):
        cfg.loss.weights[k] = 0.0
    cfg.loss.weights.adversarial = 1.0
    static, init = steps.create(cfg, RES, jax.random.key(0))
    state0 = jax.jit(init)(jax.random.key(0))
    state1, metrics = jax.jit(lambda s, b: steps.train_step(s, b, static=static))(
        state0, batch)
    assert float(metrics["loss/adversarial"]) > 0
    before, after = state0.g_params["encoder"], state1.g_params["encoder"]
    for layer in ("conv1", "conv2", "conv3", "conv4"):
        assert _changed(before[layer], after[layer]), layer
    for layer in ("conv5", "fc6", "fc7"):           # above conv4: no gradient
        assert not _changed(before[layer], after[layer]), layer
    assert not _changed(state0.g_params["heads"], state1.g_params["heads"])


def test_bfloat16_compute_keeps_float32_state_and_tracks_float32(batch, default_run):
    f32 = default_run[1]
    static, init = steps.create(step_config(**{"model.dtype": "bfloat16"}), RES,
                                jax.random.key(0))
    state0 = jax.jit(init)(jax.random.key(0))
    # One trace gives both the program text and the step that runs.
    lowered = jax.jit(lambda s, b: steps.train_step(s, b, static=static)).lower(state0, batch)
    hlo = lowered.as_text()
    bf16_state, metrics = lowered.compile()(state0, batch)
    bf16 = jax.device_get(metrics)
    for tree in (bf16_state.g_params, bf16_state.g_stats, bf16_state.d_params,
                 bf16_state.g_opt, bf16_state.pool_synthetic.features):
        assert {x.dtype for x in jax.tree.leaves(tree)
                if jnp.issubdtype(x.dtype, jnp.floating)} == {jnp.dtype(jnp.float32)}
    for key in ("loss/depth", "loss/normals", "loss/contours", "loss/adversarial"):
        assert bf16[key].dtype == np.float32
        assert bf16[key] == pytest.approx(f32[0][key], rel=2e-2), key
    # Every convolution and matrix product of the step (forward and backward,
    # G and D) computes in bfloat16.
    products = [line.split("->")[-1] for line in hlo.splitlines()
                if "stablehlo.convolution" in line or "stablehlo.dot_general" in line]
    assert len(products) > 40 and all("xbf16>" in out for out in products)
    with pytest.raises(ValueError, match="bfloat16"):
        from mtssl.config import validate
        validate(step_config(**{"model.dtype": "float16"}), 1)
