"""Flax NNX modules: encoder, dense heads, discriminator, and their assembly.

`MultiTaskNet(encoder + heads)` is the network trained on synthetic images;
`PatchDiscriminator` judges one of its tapped feature maps. Which tasks and
which encoder are configuration, not code: any non-empty subset of
`heads.TASKS`, and any encoder in `ENCODERS`. An encoder returns a dict of
named taps (`encoder_taps(name)`), has `channels` per tap, and names the tap
its heads decode from (`head_input`: fc7 for AlexNet, conv5 for ResNets).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mtssl.models import alexnet, heads, resnet
from mtssl.models.discriminator import PatchDiscriminator
from mtssl.models.heads import PAPER_TASKS, TASKS
from mtssl.models.layers import set_compute_dtype

ENCODERS = ("alexnet", "resnet18", "resnet50")


def encoder_taps(encoder: str) -> tuple[str, ...]:
    """The named features an encoder returns (adaptable and probeable)."""
    if encoder not in ENCODERS:
        raise ValueError(f"unknown encoder {encoder!r}; valid: {', '.join(ENCODERS)}")
    return alexnet.TAPS if encoder == "alexnet" else resnet.TAPS


def make_encoder(encoder: str, *, width: float, norm: str, rngs: nnx.Rngs) -> nnx.Module:
    encoder_taps(encoder)
    if encoder == "alexnet":
        return alexnet.AlexNetBN(width=width, norm=norm, rngs=rngs)
    return resnet.ResNetBN(depth=encoder, width=width, norm=norm, rngs=rngs)


class MultiTaskNet(nnx.Module):
    """Encoder plus one dense head per task.

    `__call__(images)` returns (taps, predictions): the encoder's named
    features, and per task its prediction at image resolution: `depth` log
    depth (N, H, W), `normals` unit vectors (N, H, W, 3), `contours` logits
    (N, H, W), `semantics` class logits (N, H, W, classes).
    """

    def __init__(self, *, tasks: Sequence[str] = PAPER_TASKS, encoder: str = "alexnet",
                 width: float = 1.0, norm: str = "batch", head_channels: int = 64,
                 rngs: nnx.Rngs):
        tasks = tuple(tasks)
        if not tasks or any(t not in TASKS for t in tasks) or len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks must be a non-empty subset of {tuple(TASKS)}, "
                             f"got {tasks}")
        self.tasks = tasks
        self.encoder = make_encoder(encoder, width=width, norm=norm, rngs=rngs)
        self.heads = nnx.Dict({
            t: heads.DenseHead(self.encoder.out_features, TASKS[t],
                               channels=head_channels, norm=norm, rngs=rngs)
            for t in tasks})

    def __call__(self, images: jax.Array):
        taps = self.encoder(images)
        size = images.shape[1:3]
        # Predictions (and so the losses) in float32 whatever the compute dtype.
        preds = {t: heads.postprocess(t, self.heads[t](taps[self.encoder.head_input], size)
                                      .astype(jnp.float32))
                 for t in self.tasks}
        return taps, preds


__all__ = [
    "ENCODERS",
    "PAPER_TASKS",
    "TASKS",
    "MultiTaskNet",
    "PatchDiscriminator",
    "encoder_taps",
    "make_encoder",
    "set_compute_dtype",
]
