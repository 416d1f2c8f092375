"""Small building blocks shared by the encoder, heads and discriminator."""

from __future__ import annotations

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
