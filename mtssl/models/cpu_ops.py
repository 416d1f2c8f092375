"""Mathematically identical rewrites of four layer types that XLA:CPU
computes faster than its own kernels for them: strided convolutions as
space-to-depth, im2col and one product (`strided_conv`: AlexNet's conv1, and
the input gradient of the discriminator's conv1), the dilated fc6 as
im2col and one product (`dilated_conv`), 1x1 convolutions as a product
(`pointwise_conv`), the heads' stride-2 transposed convolutions as col2im
(`conv_transpose`, in batch chunks where its per-tap array would be large).
On other backends each is the module's own op. `plain_ops()` turns them (and
`layers.BatchNorm`'s written-out backward) off while tracing: the benchmark
counts the plain network's FLOPs that way ("model FLOPs"), and the tests
compare both forms. Measured speed-ups: docs/performance.md.
"""

from __future__ import annotations

import contextlib
import functools
import threading

import jax
import jax.numpy as jnp
from flax import nnx

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


def plain_ops_active() -> bool:
    return getattr(_plain, "on", False)


def _rewrite_for_cpu() -> bool:
    return jax.default_backend() == "cpu" and not plain_ops_active()


def _in_compute_dtype(layer: nnx.Module, x: jax.Array):
    """(x, kernel, bias) in the layer's compute dtype (default: promoted),
    for the rewrites below that use a layer's parameters directly."""
    kernel = layer.kernel[...]
    bias = None if layer.bias is None else layer.bias[...]
    dtype = layer.dtype or jnp.promote_types(x.dtype, kernel.dtype)
    return (x.astype(dtype), kernel.astype(dtype),
            None if bias is None else bias.astype(dtype))


def conv_transpose_2x(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """`nnx.ConvTranspose(strides=2, padding="VALID")` (lax.conv_transpose,
    kernel not transposed) for NHWC x and an odd HWIO kernel, as col2im.

    One matrix product makes every tap's contribution, cols = x @ kernel
    (N, H, W, kh, kw, cout); output pixel (2m + p, 2n + q) sums the taps of
    parity (p, q), each shifted by its tap offset (`_col2im_2x`). Same
    parameters and FLOPs as the plain op, whose gradients XLA:CPU computes
    in a generic kernel.
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


# The largest per-tap array (`cols`) conv_transpose_2x makes at once. Each
# chunk's product writes its array and the col2im reads it straight back, so
# an array that stays in the cache (8 MB: a share of a 32 MB last-level cache)
# runs faster than one that goes through main memory: per head layer,
# forward + gradients, runlocal's 5x5 layer at 96 px 22 -> 14 ms in four
# chunks, at 227 px 136 -> 71 ms in sixteen. It also bounds the step's
# temporary memory, since the three heads' arrays are live together
# (docs/performance.md). Autodiff of the chunk loop keeps only its inputs, as
# the unchunked product does.
_COLS_CHUNK_BYTES = 8 * 2 ** 20


def _batch_chunks(n: int, bytes_per_example: int, devices: int | None = None) -> int:
    """The fewest batch chunks (a divisor of n) whose per-tap arrays fit
    `_COLS_CHUNK_BYTES` on each device, every chunk holding a multiple of the
    device count (the batch is sharded over all devices, and a chunk must stay
    sharded); as many as that allows where none fits, 1 if n does not divide."""
    devices = devices or jax.device_count()
    options = [c for c in range(1, n + 1) if n % c == 0 and (n // c) % devices == 0]
    if not options:
        return 1
    return next((c for c in options
                 if n // c // devices * bytes_per_example <= _COLS_CHUNK_BYTES), options[-1])


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
    """`conv(x)` for a 1x1 stride-1 `nnx.Conv` (AlexNet's fc7); on CPU as
    one matrix product, whose gradients XLA:CPU computes faster."""
    if not _rewrite_for_cpu():
        return conv(x)
    x, kernel, bias = _in_compute_dtype(conv, x)
    y = x @ kernel[0, 0]
    return y if bias is None else y + bias


def strided_conv(conv: nnx.Conv, x: jax.Array, *, forward: str = "space_to_depth") -> jax.Array:
    """`conv(x)` for an undilated `nnx.Conv` with stride > 1.

    On CPU, `strided_conv_space_to_depth` computes it: XLA:CPU's convolution
    kernel runs AlexNet's 3-channel, stride-4 conv1 at a few GFLOP/s (at 96
    px and 24 output channels 19 ms forward for a batch of 16, 5x the
    rewrite's forward and kernel gradient together). With
    `forward="plain"` XLA keeps the forward and the kernel gradient, which it
    computes fast for wide inputs, and only the input gradient comes from
    the rewrite: XLA computes that one as a dilated convolution in a generic
    kernel (the discriminator's 3x3 stride-2 conv1 on a 5x5 map: 2.6 ms of
    0.2 ms forward at runlocal's width, 74 of 1.8 ms at the paper's).
    Elsewhere it is the module's own op.
    """
    if not _rewrite_for_cpu():
        return conv(x)
    x, kernel, bias = _in_compute_dtype(conv, x)
    strides = conv.strides if isinstance(conv.strides, tuple) else (conv.strides,) * 2
    padding = conv.padding
    if isinstance(padding, str):            # "VALID" / "SAME": the pads they stand for
        padding = tuple(jax.lax.padtype_to_pads(x.shape[1:3], kernel.shape[:2], strides, padding))
    if forward == "plain":
        y = _plain_strided_conv_space_to_depth_input_grad(x, kernel, strides, padding)
    elif forward == "space_to_depth":
        y = strided_conv_space_to_depth(x, kernel, strides, padding)
    else:
        raise ValueError(f"forward={forward!r}; valid: 'space_to_depth', 'plain'")
    return y if bias is None else y + bias


def _plain_strided_conv(x, kernel, strides, padding):
    return jax.lax.conv_general_dilated(x, kernel, strides, padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _plain_strided_conv_space_to_depth_input_grad(x, kernel, strides, padding):
    return _plain_strided_conv(x, kernel, strides, padding)


def _plain_strided_conv_fwd(x, kernel, strides, padding):
    return _plain_strided_conv(x, kernel, strides, padding), (x, kernel)


def _plain_strided_conv_bwd(strides, padding, residuals, grad):
    x, kernel = residuals
    _, kernel_vjp = jax.vjp(lambda k: _plain_strided_conv(x, k, strides, padding), kernel)
    _, input_vjp = jax.vjp(lambda x: strided_conv_space_to_depth(x, kernel, strides, padding), x)
    return input_vjp(grad)[0], kernel_vjp(grad)[0]


_plain_strided_conv_space_to_depth_input_grad.defvjp(_plain_strided_conv_fwd,
                                                     _plain_strided_conv_bwd)


def strided_conv_space_to_depth(x: jax.Array, kernel: jax.Array, strides, padding) -> jax.Array:
    """Strided convolution (NHWC, HWIO, no dilation) as a stride-1 one on
    s x s blocks of pixels, computed as im2col and one matrix product.

    The padded input is cut into (sh, sw) blocks stacked along channels
    (space-to-depth), the kernel zero-padded to whole blocks and cut alike,
    so output (i, j) reads blocks i..i+kb-1: the same taps as the plain
    convolution, plus zero taps past the kernel's edge (11 -> 12 for
    conv1: 1.19x the products).
    """
    kh, kw, cin, cout = kernel.shape
    sh, sw = strides
    (pt, pb), (pl, pr) = padding
    b, h, w, _ = x.shape
    oh = (h + pt + pb - kh) // sh + 1
    ow = (w + pl + pr - kw) // sw + 1
    kbh, kbw = -(-kh // sh), -(-kw // sw)          # kernel extent in blocks
    rows, cols = (oh + kbh - 1) * sh, (ow + kbw - 1) * sw
    xp = jnp.pad(x, ((0, 0), (pt, max(0, rows - h - pt)), (pl, max(0, cols - w - pl)), (0, 0)))
    xp = xp[:, :rows, :cols]
    blocks = xp.reshape(b, rows // sh, sh, cols // sw, sw, cin).transpose(0, 1, 3, 2, 4, 5)
    blocks = blocks.reshape(b, rows // sh, cols // sw, sh * sw * cin)
    kernel = jnp.pad(kernel, ((0, kbh * sh - kh), (0, kbw * sw - kw), (0, 0), (0, 0)))
    kernel = kernel.reshape(kbh, sh, kbw, sw, cin, cout).transpose(0, 2, 1, 3, 4, 5)
    patches = jnp.concatenate([blocks[:, i:i + oh, j:j + ow]
                               for i in range(kbh) for j in range(kbw)], axis=-1)
    return patches @ kernel.reshape(-1, cout)


def dilated_conv(conv: nnx.Conv, x: jax.Array) -> jax.Array:
    """`conv(x)` for a stride-1 dilated `nnx.Conv` with explicit padding.

    On CPU it is computed by `dilated_conv_im2col` (XLA:CPU runs dilated
    convolutions in a generic kernel; this is AlexNet's fc6). Elsewhere it is
    the module's own op.
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
    left out: they only ever multiply zeros (AlexNet's fc6 on the 5x5 conv5
    map of a 96 px image keeps 4x4 of its 36 taps; at 227 px every tap is
    used somewhere).
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
