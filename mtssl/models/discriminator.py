"""Patch discriminator on an encoder feature map (conv5 by default).

The reference's conv5 discriminator: conv 512 k3 s2 (13 -> 6), norm, LeakyReLU
0.2, 1x1 conv 512, norm, LeakyReLU 0.2, 1x1 conv 1: a map of real/fake logits,
one per patch (on CPU conv1's input gradient is computed as
`cpu_ops.strided_conv` says). The same stack serves any tapped layer
(conv1..conv5, fc6): it is fully convolutional, so earlier, larger maps just
give more patches.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mtssl.models.cpu_ops import strided_conv
from mtssl.models.layers import make_norm, norm_needs_bias, scaled


class PatchDiscriminator(nnx.Module):
    def __init__(self, in_features: int, *, width: float = 1.0, norm: str = "batch",
                 rngs: nnx.Rngs):
        ch = scaled(512, width)
        bias = norm_needs_bias(norm)
        self.conv1 = nnx.Conv(in_features, ch, (3, 3), strides=2, padding="VALID",
                              use_bias=bias, rngs=rngs)
        self.norm1 = make_norm(norm, ch, rngs=rngs)
        self.conv2 = nnx.Conv(ch, ch, (1, 1), use_bias=bias, rngs=rngs)
        self.norm2 = make_norm(norm, ch, rngs=rngs)
        self.conv3 = nnx.Conv(ch, 1, (1, 1), rngs=rngs)

    def __call__(self, features: jax.Array) -> jax.Array:
        x = nnx.leaky_relu(self.norm1(strided_conv(self.conv1, features, forward="plain")), 0.2)
        x = nnx.leaky_relu(self.norm2(self.conv2(x)), 0.2)
        return self.conv3(x)[..., 0].astype(jnp.float32)
