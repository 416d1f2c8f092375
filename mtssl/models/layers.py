"""Small building blocks shared by the encoder, heads and discriminator.

On CPU, three layer types run in mathematically identical rewritten forms
that XLA:CPU computes faster (`dilated_conv`, `pointwise_conv`,
`conv_transpose`, the last in batch chunks where its per-tap array would be
large); on every backend, BatchNorm's training backward is written out so
that it keeps only its input (`BatchNorm`). `plain_ops()` turns all of these
off while tracing (the benchmark counts the plain network's FLOPs that way:
"model FLOPs"; tests compare both forms).
"""

from __future__ import annotations

import contextlib
import functools
import threading

import jax
import jax.numpy as jnp
from flax import nnx

NORMS = ("batch", "group")
_plain = threading.local()


@contextlib.contextmanager
def plain_ops():
    """Within this block (while tracing), layers use their plain operations
    on every backend. JAX's trace caches do not key on this switch, so they
    are cleared on entry and exit."""
    previous = getattr(_plain, "on", False)
    _plain.on = True
    jax.clear_caches()
    try:
        yield
    finally:
        _plain.on = previous
        jax.clear_caches()


def _rewrite_for_cpu() -> bool:
    return jax.default_backend() == "cpu" and not getattr(_plain, "on", False)


def make_norm(kind: str, features: int, *, rngs: nnx.Rngs) -> nnx.Module:
    """BatchNorm (PyTorch-like momentum 0.1, eps 1e-5) or GroupNorm.

    BatchNorm is the default of the method: synthetic and real batches pass
    through the encoder separately, so each is normalised with its own batch
    statistics. GroupNorm uses up to 32 groups that divide `features`.
    """
    if kind == "batch":
        return BatchNorm(features, momentum=0.9, epsilon=1e-5, rngs=rngs)
    if kind == "group":
        groups = next(g for g in (32, 16, 8, 4, 2, 1) if features % g == 0)
        return nnx.GroupNorm(features, num_groups=groups, rngs=rngs)
    raise ValueError(f"unknown norm {kind!r}; valid: {NORMS}")


class BatchNorm(nnx.BatchNorm):
    """`nnx.BatchNorm` whose training-mode backward keeps only its input.

    Same parameters, statistics and outputs; in training mode (batch
    statistics) the normalisation is `batch_norm_train`, whose gradient is
    written out (as PyTorch's is) instead of derived by autodiff, which keeps
    a centred copy of every normalised activation alive until the backward
    pass (XLA's rematerialisation barriers do not stop that on CPU): 0.2 GB
    of the paper network's step at 227 px. Inference mode and the options
    this project does not use (masks, named axes, no scale or bias, the
    two-pass variance) are the parent's."""

    def __call__(self, x, use_running_average=None, *, mask=None):
        running = (self.use_running_average if use_running_average is None
                   else use_running_average)
        if (running or mask is not None or self.axis_name is not None
                or self.axis != -1 or self.scale is None or self.bias is None
                or not self.use_fast_variance or getattr(_plain, "on", False)):
            return super().__call__(x, use_running_average, mask=mask)
        x, scale, bias = self.promote_dtype(
            (x, self.scale[...], self.bias[...]), dtype=self.dtype)
        out_dtype = jnp.result_type(x, scale, bias)
        # The same reductions as inside batch_norm_train (XLA computes them
        # once); kept outside it so that its only differentiable output is y.
        mean, var = _batch_stats(x)
        self.mean[...] = jax.lax.stop_gradient(
            self.momentum * self.mean[...] + (1 - self.momentum) * mean)
        self.var[...] = jax.lax.stop_gradient(
            self.momentum * self.var[...] + (1 - self.momentum) * var)
        return batch_norm_train(x, scale, bias, self.epsilon).astype(out_dtype)


def _batch_stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-channel mean and (biased) variance over all but the last axis, in
    at least float32, as `nnx.BatchNorm` computes them (E[x^2] - E[x]^2)."""
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    axes = tuple(range(x.ndim - 1))
    mean, mean_sq = x.mean(axes), jnp.square(x).mean(axes)
    return mean, jnp.maximum(0.0, mean_sq - jnp.square(mean))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array,
                     epsilon: float) -> jax.Array:
    """(x - mean) / sqrt(var + epsilon) * scale + bias with the batch's own
    per-channel statistics (channels last), in at least float32."""
    mean, var = _batch_stats(x)
    f32 = mean.dtype
    return ((x.astype(f32) - mean) * (jax.lax.rsqrt(var + epsilon) * scale.astype(f32))
            + bias.astype(f32))


def _batch_norm_train_fwd(x, scale, bias, epsilon):
    mean, var = _batch_stats(x)
    return batch_norm_train(x, scale, bias, epsilon), (
        x, scale, bias, mean, jax.lax.rsqrt(var + epsilon))


def _batch_norm_train_bwd(epsilon, residuals, grad):
    x, scale, bias, mean, inv_std = residuals
    f32 = mean.dtype
    axes = tuple(range(x.ndim - 1))
    count = x.size // x.shape[-1]
    grad = grad.astype(f32)
    # Written so that no activation-sized array but x and grad exists: the
    # normalised input is recomputed inside the reduction only, as
    # x * s - mean * s rather than (x - mean) * s, which XLA would merge with
    # the forward's (x - mean) and keep alive between the passes (the memory
    # this function exists to save).
    d_bias = grad.sum(axes)
    d_scale = (grad * (x.astype(f32) * inv_std - mean * inv_std)).sum(axes)
    gain = scale.astype(f32) * inv_std
    slope = gain * inv_std * d_scale / count
    d_x = gain * grad - slope * x.astype(f32) + (slope * mean - gain * d_bias / count)
    return d_x.astype(x.dtype), d_scale.astype(scale.dtype), d_bias.astype(bias.dtype)


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


def set_compute_dtype(module: nnx.Module, dtype) -> None:
    """Mixed precision: every layer of `module` computes in `dtype` (e.g.
    bfloat16) while its parameters and BatchNorm statistics stay float32
    (Flax layers cast parameters to their `dtype` when called; the BatchNorm
    statistics are reduced in float32). The change lives in the graph
    definition, so split/merge and checkpoints keep it."""
    for _, m in nnx.iter_modules(module):
        if hasattr(m, "dtype") and hasattr(m, "param_dtype"):
            m.dtype = dtype


def _in_compute_dtype(layer: nnx.Module, x: jax.Array):
    """(x, kernel, bias) in the layer's compute dtype (default: promoted),
    for the rewrites below that use a layer's parameters directly."""
    kernel = layer.kernel[...]
    bias = None if layer.bias is None else layer.bias[...]
    dtype = layer.dtype or jnp.promote_types(x.dtype, kernel.dtype)
    return (x.astype(dtype), kernel.astype(dtype),
            None if bias is None else bias.astype(dtype))


def scaled(channels: int, width: float) -> int:
    """Channel count under a width multiplier (at least 8)."""
    return max(8, int(round(channels * width)))


def norm_needs_bias(kind: str) -> bool:
    """Whether a conv followed by this norm should have a bias. BatchNorm
    subtracts each channel's mean, so a bias before it is dead weight whose
    gradient is zero up to rounding (which Adam would amplify into noise)."""
    return kind != "batch"


def conv_transpose_2x(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """`nnx.ConvTranspose(strides=2, padding="VALID")` (lax.conv_transpose,
    kernel not transposed) for NHWC x and an odd HWIO kernel, as col2im.

    One matrix product makes every tap's contribution, cols = x @ kernel
    (N, H, W, kh, kw, cout); output pixel (2m + p, 2n + q) sums the taps of
    parity (p, q), each shifted by its tap offset (`_col2im_2x`). Same
    parameters and FLOPs as the plain op; XLA:CPU computes the plain op's
    gradients in a generic kernel at 6-10 GFLOP/s, this form's at 35-170
    (7x faster decoder heads). (One product per phase instead, 9 of the 25
    taps of a 5x5 kernel at a time, was 7-12% slower and no smaller: XLA
    keeps the phases' products alive together.)
    """
    kh, kw, cin, cout = kernel.shape
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"conv_transpose_2x needs odd kernels, got {kh}x{kw}")
    n, h, w, _ = x.shape
    # lax.conv_transpose correlates the stride-dilated input with the kernel,
    # so input pixel i reaches output 2i + a through the flipped tap kh-1-a.
    flipped = kernel[::-1, ::-1].transpose(2, 0, 1, 3).reshape(cin, kh * kw * cout)

    def one_chunk(x):
        cols = (x.reshape(-1, cin) @ flipped).reshape(*x.shape[:3], kh, kw, cout)
        return _col2im_2x(cols)

    chunks = _batch_chunks(n, h * w * kh * kw * cout * x.dtype.itemsize)
    if chunks == 1:
        return one_chunk(x)
    # Example i goes to chunk i % chunks, so a batch sharded over devices
    # stays sharded inside each chunk.
    per_chunk = x.reshape(n // chunks, chunks, h, w, cin).swapaxes(0, 1)
    y = jax.lax.map(one_chunk, per_chunk)
    return y.swapaxes(0, 1).reshape(n, *y.shape[2:])


# The largest per-tap array (`cols`) conv_transpose_2x makes at once. The
# paper heads' 5x5 layer at 227 px and batch 16 would make 295 MB per head,
# with the three heads' arrays live together; in two batch chunks the step's
# temporary memory is 0.4 GB smaller at the same speed. (Smaller chunks save
# no more, and slow the narrow runlocal heads: 12.9 -> 11.6 img/s at 227 px
# in four chunks.) Autodiff of the chunk loop keeps only its inputs, as the
# unchunked product does.
_COLS_CHUNK_BYTES = 160 * 2 ** 20


def _batch_chunks(n: int, bytes_per_example: int) -> int:
    """The fewest batch chunks (a divisor of n) whose per-tap arrays fit
    `_COLS_CHUNK_BYTES` (one example per chunk if none does)."""
    return next((c for c in range(1, n + 1)
                 if n % c == 0 and n // c * bytes_per_example <= _COLS_CHUNK_BYTES), n)


@jax.custom_vjp
def _col2im_2x(cols: jax.Array) -> jax.Array:
    """(N, H, W, kh, kw, C) per-tap contributions -> the stride-2 output:
    tap (a, b) of input pixel (i, j) adds to output (2i + a, 2j + b)."""
    n, h, w, kh, kw, cout = cols.shape
    hh, ww = h + kh // 2, w + kw // 2          # phase output size (largest)
    phases = []
    for p in range(2):
        row = []
        for q in range(2):
            acc = None
            for a in range(p, kh, 2):
                for b in range(q, kw, 2):
                    s, t = a // 2, b // 2
                    tap = jnp.pad(cols[:, :, :, a, b],
                                  ((0, 0), (s, hh - h - s), (t, ww - w - t), (0, 0)))
                    acc = tap if acc is None else acc + tap
            row.append(acc)
        phases.append(jnp.stack(row, axis=3))          # (n, hh, ww, 2, c)
    out = jnp.stack(phases, axis=2).reshape(n, 2 * hh, 2 * ww, cout)
    return out[:, :2 * (h - 1) + kh, :2 * (w - 1) + kw]


def _col2im_2x_fwd(cols):
    return _col2im_2x(cols), cols.shape


def _col2im_2x_bwd(shape, grad):
    # Each tap's cotangent is one window of the output's: gathering the
    # windows into one stacked array avoids what autodiff of the pads makes,
    # a sum of kh*kw zero-padded copies of the whole (N, H, W, kh, kw, C)
    # array (that sum was ~17% of the paper network's step at 96 px on CPU).
    n, h, w, kh, kw, cout = shape
    hh, ww = h + kh // 2, w + kw // 2
    full = jnp.pad(grad, ((0, 0), (0, 2 * hh - grad.shape[1]),
                          (0, 2 * ww - grad.shape[2]), (0, 0)))
    phase = full.reshape(n, hh, 2, ww, 2, cout)
    taps = [[phase[:, a // 2:a // 2 + h, a % 2, b // 2:b // 2 + w, b % 2]
             for b in range(kw)] for a in range(kh)]
    return (jnp.stack([jnp.stack(row, axis=3) for row in taps], axis=3),)


_col2im_2x.defvjp(_col2im_2x_fwd, _col2im_2x_bwd)


def conv_transpose(up: nnx.ConvTranspose, x: jax.Array) -> jax.Array:
    """`up(x)` for the heads' stride-2 VALID transposed convolutions: on CPU
    via `conv_transpose_2x`, elsewhere the module's own op."""
    if not _rewrite_for_cpu():
        return up(x)
    x, kernel, bias = _in_compute_dtype(up, x)
    y = conv_transpose_2x(x, kernel)
    return y if bias is None else y + bias


def pointwise_conv(conv: nnx.Conv, x: jax.Array) -> jax.Array:
    """`conv(x)` for a 1x1 stride-1 `nnx.Conv`; on CPU as one matrix product
    (XLA:CPU's 1x1-convolution gradients are ~4x slower than the product's:
    AlexNet's fc7)."""
    if not _rewrite_for_cpu():
        return conv(x)
    x, kernel, bias = _in_compute_dtype(conv, x)
    y = x @ kernel[0, 0]
    return y if bias is None else y + bias


def dilated_conv(conv: nnx.Conv, x: jax.Array) -> jax.Array:
    """`conv(x)` for a stride-1 dilated `nnx.Conv` with explicit padding.

    On CPU it is computed by `dilated_conv_im2col`: XLA:CPU runs dilated
    convolutions in a generic kernel at ~10-20 GFLOP/s, a matrix product at
    ~180 (this is AlexNet's fc6). Elsewhere it is the module's own op.
    """
    if not _rewrite_for_cpu():
        return conv(x)
    dilation = conv.kernel_dilation
    x, kernel, bias = _in_compute_dtype(conv, x)
    y = dilated_conv_im2col(x, kernel, conv.padding,
                            dilation if isinstance(dilation, tuple) else (dilation,) * 2)
    return y if bias is None else y + bias


def dilated_conv_im2col(x: jax.Array, kernel: jax.Array, padding, dilation) -> jax.Array:
    """Stride-1 dilated convolution (NHWC, HWIO) as im2col, the dilated taps
    concatenated along channels, and one matrix product.

    Kernel rows (columns) whose taps land on padding for every output are
    left out: they only ever multiply zeros. AlexNet's fc6 (6x6, dilation 2,
    padding 5) on the 5x5 conv5 map of a 96 px image keeps 4x4 of its 36
    taps, 0.44x the FLOPs (1.8x faster forward and backward); at 227 px
    (13x13) every tap is used somewhere and nothing changes.
    """
    kh, kw, cin, cout = kernel.shape
    (pt, pb), (pl, pr) = padding
    dh, dw = dilation
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    oh = xp.shape[1] - dh * (kh - 1)
    ow = xp.shape[2] - dw * (kw - 1)
    i0, i1 = _taps_in_bounds(x.shape[1], oh, pt, kh, dh)
    j0, j1 = _taps_in_bounds(x.shape[2], ow, pl, kw, dw)
    patches = jnp.concatenate([xp[:, i * dh:i * dh + oh, j * dw:j * dw + ow]
                               for i in range(i0, i1) for j in range(j0, j1)], axis=-1)
    return patches @ kernel[i0:i1, j0:j1].reshape(-1, cout)


def _taps_in_bounds(size: int, out: int, pad: int, k: int, dilation: int) -> tuple[int, int]:
    """[first, last + 1) of the kernel taps (along one axis) that read an
    input pixel, not padding, for at least one of the `out` outputs; the
    others are the outermost taps, so the used ones are contiguous."""
    used = [i for i in range(k) if any(0 <= o - pad + i * dilation < size
                                       for o in range(out))]
    if not used:
        raise ValueError(f"every tap of a {k}-wide kernel lands on padding")
    return used[0], used[-1] + 1
