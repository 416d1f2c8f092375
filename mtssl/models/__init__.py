"""Flax NNX modules: encoder, dense heads, discriminator, and their assembly.

`MultiTaskNet(encoder + heads)` is the network trained on synthetic images;
`PatchDiscriminator` judges one of its tapped feature maps. Which tasks and
which encoder are configuration, not code: any non-empty subset of
`heads.TASKS`, and any encoder in `ENCODERS` (all return named taps).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

from mtssl.models import alexnet, heads
from mtssl.models.discriminator import PatchDiscriminator
from mtssl.models.heads import TASKS

ENCODERS = ("alexnet",)


class MultiTaskNet(nnx.Module):
    """Encoder plus one dense head per task.

    `__call__(images)` returns (taps, predictions): the encoder's named
    features, and per task its prediction at image resolution: `depth` log
    depth (N, H, W), `normals` unit vectors (N, H, W, 3), `contours` logits
    (N, H, W).
    """

    def __init__(self, *, tasks: Sequence[str] = tuple(TASKS), encoder: str = "alexnet",
                 width: float = 1.0, norm: str = "batch", head_channels: int = 64,
                 rngs: nnx.Rngs):
        tasks = tuple(tasks)
        if not tasks or any(t not in TASKS for t in tasks) or len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks must be a non-empty subset of {tuple(TASKS)}, "
                             f"got {tasks}")
        if encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {encoder!r}; valid: {ENCODERS}")
        self.tasks = tasks
        self.encoder = alexnet.AlexNetBN(width=width, norm=norm, rngs=rngs)
        self.heads = nnx.Dict({
            t: heads.DenseHead(self.encoder.out_features, TASKS[t],
                               channels=head_channels, norm=norm, rngs=rngs)
            for t in tasks})

    def __call__(self, images: jax.Array):
        taps = self.encoder(images)
        size = images.shape[1:3]
        preds = {t: heads.postprocess(t, self.heads[t](taps["fc7"], size))
                 for t in self.tasks}
        return taps, preds


__all__ = ["ENCODERS", "MultiTaskNet", "PatchDiscriminator", "TASKS"]
