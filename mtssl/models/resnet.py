"""A modern backbone behind the encoder interface: ResNet-18/50 with a
dilated last stage.

Stages follow the ResNet paper's names, so the taps are the same as the
AlexNet encoder's convolutional ones: `conv1` (7x7 stride-2 stem), `conv2`
.. `conv5` (the four residual stages, conv2_x .. conv5_x). conv5 keeps
stride 16 with dilation 2 instead of going to stride 32, so dense heads see
a 15x15 map at 227 px, like AlexNet's 13x13. Taps are taken before the final
ReLU of each stage (after the residual addition), as AlexNet's are taken
before theirs. The heads decode from `conv5`.
"""

from __future__ import annotations

import jax
from flax import nnx

from mtssl.models.cpu_ops import dilated_conv
from mtssl.models.layers import make_norm, norm_needs_bias, scaled

TAPS = ("conv1", "conv2", "conv3", "conv4", "conv5")
DEPTHS = {"resnet18": (2, 2, 2, 2), "resnet50": (3, 4, 6, 3)}
_STAGE_CHANNELS = (64, 128, 256, 512)


class _Block(nnx.Module):
    """Basic (two 3x3) or bottleneck (1x1, 3x3, 1x1 x4) residual block,
    returning the pre-ReLU sum."""

    def __init__(self, cin: int, ch: int, *, bottleneck: bool, stride: int,
                 dilation: int, norm: str, rngs: nnx.Rngs):
        bias = norm_needs_bias(norm)
        cout = ch * 4 if bottleneck else ch

        def conv(a, b, k, s=1, d=1):
            p = d * (k // 2)
            return nnx.Conv(a, b, (k, k), strides=s, padding=((p, p), (p, p)),
                            kernel_dilation=d, use_bias=bias, rngs=rngs)

        if bottleneck:
            convs = [conv(cin, ch, 1), conv(ch, ch, 3, stride, dilation),
                     conv(ch, cout, 1)]
        else:
            convs = [conv(cin, ch, 3, stride, dilation), conv(ch, cout, 3, 1, dilation)]
        self.convs = nnx.List(convs)
        self.norms = nnx.List([make_norm(norm, c.out_features, rngs=rngs) for c in convs])
        # Projection shortcut where the shape changes (nnx.data: may be None).
        self.project = nnx.data(None)
        self.project_norm = nnx.data(None)
        if stride != 1 or cin != cout:
            self.project = nnx.data(conv(cin, cout, 1, stride))
            self.project_norm = nnx.data(make_norm(norm, cout, rngs=rngs))
        self.out_features = cout

    def __call__(self, x: jax.Array) -> jax.Array:
        y = x
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            y = norm(dilated_conv(conv, y) if conv.kernel_dilation != 1 else conv(y))
            if i < len(self.convs) - 1:
                y = nnx.relu(y)
        shortcut = x if self.project is None else self.project_norm(self.project(x))
        return y + shortcut


class ResNetBN(nnx.Module):
    def __init__(self, *, depth: str = "resnet18", width: float = 1.0,
                 norm: str = "batch", rngs: nnx.Rngs):
        if depth not in DEPTHS:
            raise ValueError(f"unknown ResNet {depth!r}; valid: {tuple(DEPTHS)}")
        bottleneck = depth == "resnet50"
        stem = scaled(64, width)
        self.stem = nnx.Conv(3, stem, (7, 7), strides=2, padding=((3, 3), (3, 3)),
                             use_bias=norm_needs_bias(norm), rngs=rngs)
        self.stem_norm = make_norm(norm, stem, rngs=rngs)
        self.channels = {"conv1": stem}
        stages, cin = [], stem
        for i, (n_blocks, ch) in enumerate(zip(DEPTHS[depth], _STAGE_CHANNELS)):
            stride = 2 if i in (1, 2) else 1
            dilation = 2 if i == 3 else 1
            blocks = []
            for b in range(n_blocks):
                blocks.append(_Block(cin, scaled(ch, width), bottleneck=bottleneck,
                                     stride=stride if b == 0 else 1,
                                     dilation=dilation, norm=norm, rngs=rngs))
                cin = blocks[-1].out_features
            stages.append(nnx.List(blocks))
            self.channels[TAPS[i + 1]] = cin
        self.stages = nnx.List(stages)

    taps = TAPS
    head_input = "conv5"

    @property
    def out_features(self) -> int:
        return self.channels["conv5"]

    def __call__(self, x: jax.Array, upto: str | None = None) -> dict[str, jax.Array]:
        """Named taps of images x; with `upto`, stops after that tap."""
        taps = {}
        x = taps["conv1"] = self.stem_norm(self.stem(x))
        if upto == "conv1":
            return taps
        x = nnx.max_pool(nnx.relu(x), (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for name, blocks in zip(TAPS[1:], self.stages):
            for block in blocks:
                x = block(x)
                if block is not blocks[-1]:
                    x = nnx.relu(x)
            taps[name] = x
            if name == upto:
                break
            x = nnx.relu(x)
        return taps
