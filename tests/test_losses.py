"""Each loss against a value computed by hand."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from mtssl import losses


def test_depth_variants_by_hand():
    pred = jnp.array([[[1.0, 2.0]]])        # (1, 1, 2): d = [1, -1] after target
    target = jnp.array([[[0.0, 3.0]]])
    # d = [1, -1]: mean(d^2) = 1, mean(d) = 0
    assert losses.depth_loss(pred, target) == pytest.approx(0.5)
    assert losses.depth_loss(pred, target, variant="scale_invariant") == pytest.approx(1.0)
    assert losses.depth_loss(pred, target, variant="l1") == pytest.approx(1.0)
    # d = [2, 0]: mean(d^2) = 2, mean(d) = 1
    pred2 = jnp.array([[[2.0, 3.0]]])
    assert losses.depth_loss(pred2, target) == pytest.approx(0.5 * (2 + 0.5))
    assert losses.depth_loss(pred2, target, variant="scale_invariant") == pytest.approx(1.5)


def test_scale_invariant_depth_discounts_each_images_own_scale():
    rng = np.random.default_rng(0)
    target = jnp.asarray(rng.normal(size=(2, 4, 4)))
    log_scales = jnp.array([0.7, -0.3])[:, None, None]
    shifted = target + log_scales       # log(s * depth) = log depth + log s, per image
    si = losses.depth_loss(shifted, target, variant="scale_invariant")
    ref = losses.depth_loss(shifted, target)
    # lambda = 0.5 keeps half of each image's squared log scale
    assert si == pytest.approx(0.5 * (0.7 ** 2 + 0.3 ** 2) / 2)
    # the reference's batch means: mean(d^2) = 0.29, mean(d) = 0.2
    assert ref == pytest.approx(0.5 * (0.29 + 0.5 * 0.04))


def test_scale_invariant_depth_weighs_images_not_pixels():
    # Image 0 has one valid pixel, image 1 three, image 2 none: each image with
    # valid pixels counts once, whatever its number of pixels.
    d = jnp.array([[[2.0, 9.0, 9.0]], [[1.0, 1.0, 4.0]], [[5.0, 5.0, 5.0]]])
    mask = jnp.array([[[True, False, False]], [[True, True, True]],
                      [[False, False, False]]])
    si = losses.depth_loss(d, jnp.zeros_like(d), mask, "scale_invariant")
    image0 = 4.0 - 0.5 * 4.0                  # mean(d^2) = 4, mean(d) = 2
    image1 = 18.0 / 3 - 0.5 * 2.0 ** 2        # mean(d^2) = 6, mean(d) = 2
    assert si == pytest.approx((image0 + image1) / 2)


def test_masks_select_pixels():
    pred = jnp.array([[[1.0, 100.0]]])
    target = jnp.array([[[0.0, 0.0]]])
    mask = jnp.array([[[True, False]]])
    assert losses.depth_loss(pred, target, mask, "l1") == pytest.approx(1.0)
    assert losses.depth_target(jnp.array(1.0)) == pytest.approx(1e-8, abs=1e-7)


def test_normals_loss_by_hand():
    gt = jnp.array([[[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]]])
    pred = jnp.array([[[[0.0, 0.0, 5.0], [1.0, 1.0, 0.0]]]])   # unnormalised
    expected = 0.5 * ((1 - 1) + (1 - 1 / math.sqrt(2)))
    assert losses.normals_loss(pred, gt) == pytest.approx(expected, rel=1e-6)


def test_contour_weightings_by_hand():
    logits = jnp.zeros((1, 2, 2))                 # every BCE term is log 2
    target = jnp.array([[[1.0, 0.0], [0.0, 0.0]]])
    l2 = math.log(2)
    # reference: positive weight (4 - 1) / 1 = 3, negatives 1: mean(3, 1, 1, 1)
    assert losses.contour_loss(logits, target) == pytest.approx(l2 * 6 / 4)
    # hed: positive 3/4, negatives 1/4 each: mean(3/4, 1/4, 1/4, 1/4)
    assert losses.contour_loss(logits, target, weighting="hed") == pytest.approx(
        l2 * 1.5 / 4)
    assert losses.contour_loss(logits, target, weighting="none") == pytest.approx(l2)


def test_contour_weights_are_per_image():
    logits = jnp.zeros((2, 1, 4))
    target = jnp.array([[[1.0, 0, 0, 0]], [[1.0, 1, 0, 0]]])
    l2 = math.log(2)
    # image 0: pos weight 3 -> (3 + 3) / 4; image 1: pos weight 1 -> 4 / 4
    assert losses.contour_loss(logits, target) == pytest.approx(l2 * (6 + 4) / 8)


def test_gan_losses_by_hand():
    logits = jnp.array([0.0, 2.0])
    bce_real = np.mean([math.log(2), math.log(1 + math.exp(-2))])
    assert losses.gan_loss(logits, True) == pytest.approx(bce_real)
    assert losses.adversarial_loss(logits) == pytest.approx(bce_real)
    assert losses.gan_loss(logits, True, "lsgan") == pytest.approx((1 + 1) / 2)
    assert losses.gan_loss(logits, False, "lsgan") == pytest.approx((0 + 4) / 2)
    d = losses.discriminator_loss(jnp.array([0.0]), jnp.array([0.0]))
    assert d == pytest.approx(math.log(2))
    acc = losses.discriminator_accuracy(jnp.array([-1.0, 1.0]), jnp.array([1.0, 1.0]))
    assert acc == pytest.approx(0.75)


def test_bad_variant_names_list_the_valid_ones():
    x = jnp.zeros((1, 2, 2))
    with pytest.raises(ValueError, match="scale_invariant"):
        losses.depth_loss(x, x, variant="eigen")
    with pytest.raises(ValueError, match="hed"):
        losses.contour_loss(x, x, weighting="balanced")
    with pytest.raises(ValueError, match="lsgan"):
        losses.gan_loss(x, True, "wgan")


def test_semantic_loss_is_cross_entropy_over_labelled_pixels():
    logits = jnp.array([[[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [9.0, -9.0, 3.0]]]])
    labels = jnp.array([[[0, 2, -1]]])          # the last pixel has no class
    want = np.mean([np.log1p(2 * np.exp(-2.0)), np.log(np.e + 2)])
    assert float(losses.semantic_loss(logits, labels)) == pytest.approx(want, rel=1e-5)
    # Nothing labelled: zero, not NaN.
    assert float(losses.semantic_loss(logits, jnp.full((1, 1, 3), -1))) == 0.0
