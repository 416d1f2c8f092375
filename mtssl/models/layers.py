"""Small building blocks shared by the encoder, heads and discriminator."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

NORMS = ("batch", "group")


def make_norm(kind: str, features: int, *, rngs: nnx.Rngs) -> nnx.Module:
    """BatchNorm (PyTorch-like momentum 0.1, eps 1e-5) or GroupNorm.

    BatchNorm is the default of the method: synthetic and real batches pass
    through the encoder separately, so each is normalised with its own batch
    statistics. GroupNorm uses up to 32 groups that divide `features`.
    """
    if kind == "batch":
        return nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5, rngs=rngs)
    if kind == "group":
        groups = next(g for g in (32, 16, 8, 4, 2, 1) if features % g == 0)
        return nnx.GroupNorm(features, num_groups=groups, rngs=rngs)
    raise ValueError(f"unknown norm {kind!r}; valid: {NORMS}")


def scaled(channels: int, width: float) -> int:
    """Channel count under a width multiplier (at least 8)."""
    return max(8, int(round(channels * width)))


def norm_needs_bias(kind: str) -> bool:
    """Whether a conv followed by this norm should have a bias. BatchNorm
    subtracts each channel's mean, so a bias before it is dead weight whose
    gradient is zero up to rounding (which Adam would amplify into noise)."""
    return kind != "batch"


def conv_transpose_2x(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """`nnx.ConvTranspose(strides=2, padding="VALID")` with an odd kernel
    (kh, kw, cin, cout), computed as four stride-1 convolutions whose
    outputs are interleaved.

    Output pixel (2m + p, 2n + q) only meets the kernel taps of parity
    (p, q), so each phase is an ordinary convolution of the input with the
    sub-kernel kernel[p::2, q::2]. Same parameters, same FLOPs, same result
    (up to float rounding) and gradient; XLA:CPU runs the gradient of this
    form several times faster than that of the dilated-input transposed
    convolution.
    """
    kh, kw = kernel.shape[:2]
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"conv_transpose_2x needs odd kernels, got {kh}x{kw}")
    n, h, w, _ = x.shape
    rows = []
    for p in range(2):
        cols = []
        for q in range(2):
            sub = kernel[p::2, q::2]
            th, tw = sub.shape[:2]
            y = jax.lax.conv_general_dilated(
                x, sub, (1, 1), ((th - 1, th - 1), (tw - 1, tw - 1)),
                dimension_numbers=("NHWC", "HWIO", "NHWC"))
            # Phase outputs are (h + kh // 2 - p) tall: pad to a common size.
            cols.append(jnp.pad(y, ((0, 0), (0, p), (0, q), (0, 0))))
        rows.append(jnp.stack(cols, axis=3))           # (n, H', W', 2, c)
    out = jnp.stack(rows, axis=2)                      # (n, H', 2, W', 2, c)
    hh, ww = h + kh // 2, w + kw // 2
    out = out.reshape(n, 2 * hh, 2 * ww, kernel.shape[-1])
    return out[:, :2 * (h - 1) + kh, :2 * (w - 1) + kw]


def dilated_conv(conv: nnx.Conv, x: jax.Array) -> jax.Array:
    """`conv(x)` for a stride-1 dilated `nnx.Conv` with explicit padding.

    On CPU it is computed by `dilated_conv_im2col`: XLA:CPU runs dilated
    convolutions in a generic kernel at ~10-20 GFLOP/s, a matrix product at
    ~180 (this is AlexNet's fc6). Elsewhere it is the module's own op.
    """
    if jax.default_backend() != "cpu":
        return conv(x)
    dilation = conv.kernel_dilation
    y = dilated_conv_im2col(x, conv.kernel[...], conv.padding,
                            dilation if isinstance(dilation, tuple) else (dilation,) * 2)
    return y if conv.bias is None else y + conv.bias[...]


def dilated_conv_im2col(x: jax.Array, kernel: jax.Array, padding, dilation) -> jax.Array:
    """Stride-1 dilated convolution (NHWC, HWIO) as im2col, the kh*kw dilated
    taps concatenated along channels, and one matrix product."""
    kh, kw, cin, cout = kernel.shape
    (pt, pb), (pl, pr) = padding
    dh, dw = dilation
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    oh = xp.shape[1] - dh * (kh - 1)
    ow = xp.shape[2] - dw * (kw - 1)
    patches = jnp.concatenate([xp[:, i * dh:i * dh + oh, j * dw:j * dw + ow]
                               for i in range(kh) for j in range(kw)], axis=-1)
    return patches @ kernel.reshape(kh * kw * cin, cout)
