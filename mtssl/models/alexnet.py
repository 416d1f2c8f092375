"""The paper's encoder: CaffeNet/AlexNet with BatchNorm, fully convolutional.

Layer by layer (227 px input, width 1):
  conv1  conv 96,  k11 s4 pad 2, norm          56x56
  pool1  ReLU, maxpool k3 s2                   27x27
  conv2  conv 256, k5 pad 2, norm              27x27
  pool2  ReLU, maxpool k3 s2                   13x13
  conv3  ReLU, conv 384, k3 pad 1, norm        13x13
  conv4  ReLU, conv 384, k3 pad 1, norm        13x13
  conv5  ReLU, conv 256, k3 pad 1, norm        13x13  (the adapted layer)
  pool5  ReLU, maxpool k3 s1 pad 1             13x13
  fc6    conv 4096, k6 dilation 2 pad 5, norm  13x13  (reshapes to CaffeNet's fc6)
  fc7    ReLU, conv 4096 k1, norm              13x13
No groups, no LRN. `__call__` returns every tapped feature by name, taken
after the norm and before the ReLU, as the discriminator and probes use them
(`upto=` stops early, e.g. at the adapted layer for the real domain).
`width` scales every channel count (0.25 gives a network for CPU runs).
"""

from __future__ import annotations

import jax
from flax import nnx

from mtssl.models.cpu_ops import dilated_conv, pointwise_conv, strided_conv
from mtssl.models.layers import make_norm, norm_needs_bias, scaled

TAPS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")
_CHANNELS = {"conv1": 96, "conv2": 256, "conv3": 384, "conv4": 384, "conv5": 256,
             "fc6": 4096, "fc7": 4096}


class AlexNetBN(nnx.Module):
    def __init__(self, *, width: float = 1.0, norm: str = "batch", rngs: nnx.Rngs):
        ch = {k: scaled(v, width) for k, v in _CHANNELS.items()}
        self.channels = ch
        bias = norm_needs_bias(norm)

        def conv(name, cin, k, stride=1, pad=0, dilation=1):
            return nnx.Conv(cin, ch[name], (k, k), strides=stride,
                            padding=((pad, pad), (pad, pad)), kernel_dilation=dilation,
                            use_bias=bias, rngs=rngs)

        self.conv1 = conv("conv1", 3, 11, stride=4, pad=2)
        self.conv2 = conv("conv2", ch["conv1"], 5, pad=2)
        self.conv3 = conv("conv3", ch["conv2"], 3, pad=1)
        self.conv4 = conv("conv4", ch["conv3"], 3, pad=1)
        self.conv5 = conv("conv5", ch["conv4"], 3, pad=1)
        self.fc6 = conv("fc6", ch["conv5"], 6, pad=5, dilation=2)
        self.fc7 = conv("fc7", ch["fc6"], 1)
        self.norms = nnx.Dict({k: make_norm(norm, ch[k], rngs=rngs) for k in TAPS})

    taps = TAPS
    head_input = "fc7"

    @property
    def out_features(self) -> int:
        return self.channels["fc7"]

    def __call__(self, x: jax.Array, upto: str | None = None) -> dict[str, jax.Array]:
        """Named taps of images x; with `upto`, stops after that tap."""
        relu, norms = nnx.relu, self.norms

        def pool(x, stride=2, pad=0):
            return nnx.max_pool(relu(x), (3, 3), strides=(stride, stride),
                                padding=((pad, pad), (pad, pad)))

        stages = (
            ("conv1", lambda x: norms["conv1"](strided_conv(self.conv1, x))),
            ("conv2", lambda x: norms["conv2"](self.conv2(pool(x)))),
            ("conv3", lambda x: norms["conv3"](self.conv3(pool(x)))),
            ("conv4", lambda x: norms["conv4"](self.conv4(relu(x)))),
            ("conv5", lambda x: norms["conv5"](self.conv5(relu(x)))),
            ("fc6", lambda x: norms["fc6"](dilated_conv(self.fc6, pool(x, 1, 1)))),
            ("fc7", lambda x: norms["fc7"](pointwise_conv(self.fc7, relu(x)))),
        )
        taps = {}
        for name, stage in stages:
            x = taps[name] = stage(x)
            if name == upto:
                break
        return taps
