"""Loss functions of the method: pure functions of arrays, no configuration.

Conventions: predictions and targets are batched NHWC arrays (N, H, W, C) or
(N, H, W); an optional `mask` (N, H, W) of valid pixels (bool or 0/1) limits
every dense loss to those pixels. Means are taken over all valid pixels of the
batch, as in the reference code, except the scale-invariant depth loss, which
is Eigen et al.'s per image. The paper's loss weights (depth 5, normals
10, contours 1, adversarial 0.05; ours for semantics: 1) are applied by the
caller, not here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

DEPTH_VARIANTS = ("reference", "scale_invariant", "l1")
CONTOUR_WEIGHTINGS = ("reference", "hed", "none")
GAN_LOSSES = ("bce", "lsgan")


def _squeeze(x):
    return x[..., 0] if x.ndim == 4 and x.shape[-1] == 1 else x


def _masked_mean(x, mask):
    if mask is None:
        return jnp.mean(x)
    mask = mask.astype(x.dtype)
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def depth_target(depth_m: jax.Array) -> jax.Array:
    """The reference's regression target: log depth, log(d + 1e-8)."""
    return jnp.log(depth_m + 1e-8)


def depth_loss(pred_log, target_log, mask=None, variant: str = "reference"):
    """Loss between predicted and true log depth; d = pred - target.

    reference:        0.5 * (mean(d^2) + 0.5 * mean(d)^2)   (the public code;
                      means over the batch)
    scale_invariant:  mean(d^2) - 0.5 * mean(d)^2 of each image, averaged over
                      the images with valid pixels (Eigen et al. 2014): half of
                      each image's own log-scale error goes unpunished
    l1:               mean(|d|)
    """
    if variant not in DEPTH_VARIANTS:
        raise ValueError(f"unknown depth loss {variant!r}; valid: {DEPTH_VARIANTS}")
    d = _squeeze(pred_log) - _squeeze(target_log)
    if variant == "l1":
        return _masked_mean(jnp.abs(d), mask)
    if variant == "reference":
        m2, m1 = _masked_mean(d * d, mask), _masked_mean(d, mask)
        return 0.5 * (m2 + 0.5 * m1 * m1)
    weight = jnp.ones_like(d) if mask is None else mask.astype(d.dtype)
    pixel_axes = tuple(range(1, d.ndim))
    count = jnp.sum(weight, pixel_axes)
    per_pixel = 1.0 / jnp.maximum(count, 1.0)
    m2 = jnp.sum(d * d * weight, pixel_axes) * per_pixel
    m1 = jnp.sum(d * weight, pixel_axes) * per_pixel
    has_pixels = (count > 0).astype(d.dtype)
    return jnp.sum((m2 - 0.5 * m1 * m1) * has_pixels) / jnp.maximum(jnp.sum(has_pixels), 1.0)


def normals_loss(pred, target, mask=None):
    """mean(1 - cos(normalize(pred), target)); target is unit length."""
    pred = pred * jax.lax.rsqrt(jnp.maximum(jnp.sum(pred * pred, -1, keepdims=True),
                                            1e-12))
    return _masked_mean(1.0 - jnp.sum(pred * target, -1), mask)


def contour_loss(logits, target, mask=None, weighting: str = "reference"):
    """Sigmoid cross-entropy for contour maps, with class balancing per image.

    reference: edge pixels weighted by (pixels - edge pixels) / edge pixels
               of their image, others by 1 (our reading of the public code's
               per-image weight: a per-image positive-class weight).
    hed:       edge pixels by |non-edge| / |all|, others by |edge| / |all|
               (Xie & Tu 2015).
    none:      unweighted.
    """
    if weighting not in CONTOUR_WEIGHTINGS:
        raise ValueError(f"unknown contour weighting {weighting!r}; valid: "
                         f"{CONTOUR_WEIGHTINGS}")
    logits, target = _squeeze(logits), _squeeze(target).astype(logits.dtype)
    valid = jnp.ones_like(target) if mask is None else mask.astype(target.dtype)
    axes = tuple(range(1, target.ndim))
    pos = jnp.sum(target * valid, axes, keepdims=True)
    total = jnp.sum(valid, axes, keepdims=True)
    if weighting == "reference":
        w_pos, w_neg = (total - pos) / jnp.maximum(pos, 1.0), 1.0
    elif weighting == "hed":
        w_pos = (total - pos) / jnp.maximum(total, 1.0)
        w_neg = pos / jnp.maximum(total, 1.0)
    else:
        w_pos, w_neg = 1.0, 1.0
    weight = jnp.where(target > 0.5, w_pos, w_neg)
    bce = optax.sigmoid_binary_cross_entropy(logits, target)
    return _masked_mean(weight * bce, mask)


def semantic_loss(logits, labels):
    """Softmax cross-entropy of (N, H, W, C) class logits against (N, H, W)
    integer labels, averaged over the labelled pixels (0 <= label < C;
    `scenes.NO_CLASS` and any other label outside that range are ignored)."""
    labelled = (labels >= 0) & (labels < logits.shape[-1])
    ce = optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.where(labelled, labels, 0))
    return _masked_mean(ce, labelled)


def gan_loss(logits, real: bool, kind: str = "bce"):
    """Loss pushing discriminator `logits` towards the `real` (True) or fake
    label: binary cross-entropy on logits, or least squares (LSGAN, targets
    1 / 0 on the raw outputs)."""
    if kind not in GAN_LOSSES:
        raise ValueError(f"unknown GAN loss {kind!r}; valid: {GAN_LOSSES}")
    target = 1.0 if real else 0.0
    if kind == "bce":
        return jnp.mean(optax.sigmoid_binary_cross_entropy(
            logits, jnp.full_like(logits, target)))
    return jnp.mean(jnp.square(logits - target))


def discriminator_loss(logits_synthetic, logits_real, kind: str = "bce"):
    """0.5 * (loss(D(synthetic), fake) + loss(D(real), real)), the reference's
    discriminator objective (real images are the 'real' class)."""
    return 0.5 * (gan_loss(logits_synthetic, False, kind)
                  + gan_loss(logits_real, True, kind))


def adversarial_loss(logits_synthetic, kind: str = "bce"):
    """The encoder's term: synthetic features should look real to D
    (non-saturating form)."""
    return gan_loss(logits_synthetic, True, kind)


def discriminator_accuracy(logits_synthetic, logits_real, kind: str = "bce"):
    """Share of patch decisions D gets right (threshold 0 for BCE logits,
    0.5 for least-squares outputs)."""
    threshold = 0.0 if kind == "bce" else 0.5
    return 0.5 * (jnp.mean(logits_synthetic < threshold)
                  + jnp.mean(logits_real >= threshold))
