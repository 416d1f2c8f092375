"""Small building blocks shared by the encoder, heads and discriminator:
norm layers, the width multiplier, mixed precision.

On every backend, BatchNorm's training backward is written out so that it
keeps only its input (`BatchNorm`); `cpu_ops.plain_ops()` turns that off
while tracing, as it does the CPU rewrites of `mtssl.models.cpu_ops`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from mtssl.models.cpu_ops import plain_ops_active

NORMS = ("batch", "group")


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
                or not self.use_fast_variance or plain_ops_active()):
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


def scaled(channels: int, width: float) -> int:
    """Channel count under a width multiplier (at least 8)."""
    return max(8, int(round(channels * width)))


def norm_needs_bias(kind: str) -> bool:
    """Whether a conv followed by this norm should have a bias. BatchNorm
    subtracts each channel's mean, so a bias before it is dead weight whose
    gradient is zero up to rounding (which Adam would amplify into noise)."""
    return kind != "batch"
