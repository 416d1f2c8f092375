"""Dense prediction heads: decoders from the encoder's last features to maps.

Each head is the reference's decoder: four stride-2 transposed convolutions
with 64 channels, no padding and kernels 3, 3, 5, 3, which take the 13x13
features of a 227 px image exactly back to 227 px (13 -> 27 -> 55 -> 113 ->
227), with norm and ReLU between them and no skip connections. For other
input sizes a final bilinear resize brings the map to the image size.
The transposed convolutions keep `nnx.ConvTranspose` parameters; on CPU they
run as col2im (`cpu_ops.conv_transpose_2x`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mtssl.data.scenes import SEMANTIC_CLASSES
from mtssl.models.cpu_ops import conv_transpose
from mtssl.models.layers import make_norm, norm_needs_bias

# task -> output channels. The paper's three tasks are the default; semantics
# (per-pixel classes of the scene engine) is the fourth it names as future work.
TASKS = {"depth": 1, "normals": 3, "contours": 1, "semantics": len(SEMANTIC_CLASSES)}
PAPER_TASKS = ("depth", "normals", "contours")
_KERNELS = (3, 3, 5, 3)


class DenseHead(nnx.Module):
    def __init__(self, in_features: int, out_channels: int, *, channels: int = 64,
                 norm: str = "batch", rngs: nnx.Rngs):
        self.ups = nnx.List()
        self.norms = nnx.List()
        cin = in_features
        for i, k in enumerate(_KERNELS):
            last = i == len(_KERNELS) - 1
            cout = out_channels if last else channels
            self.ups.append(nnx.ConvTranspose(
                cin, cout, (k, k), strides=(2, 2), padding="VALID",
                use_bias=last or norm_needs_bias(norm), rngs=rngs))
            if not last:
                self.norms.append(make_norm(norm, cout, rngs=rngs))
            cin = cout

    def __call__(self, features: jax.Array, size: tuple[int, int]) -> jax.Array:
        x = nnx.relu(features)
        for i, up in enumerate(self.ups):
            x = conv_transpose(up, x)
            if i < len(self.norms):
                x = nnx.relu(self.norms[i](x))
        if x.shape[1:3] != tuple(size):
            x = jax.image.resize(x, (x.shape[0], *size, x.shape[-1]), "bilinear")
        return x


def postprocess(task: str, raw: jax.Array) -> jax.Array:
    """Raw head output -> prediction: log depth (H, W), unit normals, contour
    logits (H, W), semantic class logits (H, W, classes)."""
    if task == "normals":
        return raw * jax.lax.rsqrt(jnp.maximum(jnp.sum(raw * raw, -1, keepdims=True),
                                               1e-12))
    if task == "semantics":
        return raw
    return raw[..., 0]
