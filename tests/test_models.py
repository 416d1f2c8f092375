"""Model shapes, the paper's geometry, task subsets and norm options."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mtssl.models import MultiTaskNet, PatchDiscriminator, alexnet


def test_alexnet_geometry_at_227():
    enc = alexnet.AlexNetBN(width=0.125, rngs=nnx.Rngs(0))
    taps = enc(jnp.zeros((2, 227, 227, 3)))
    assert set(taps) == set(alexnet.TAPS)
    sizes = {k: v.shape[1:3] for k, v in taps.items()}
    assert sizes == {"conv1": (56, 56), "conv2": (27, 27), "conv3": (13, 13),
                     "conv4": (13, 13), "conv5": (13, 13), "fc6": (13, 13),
                     "fc7": (13, 13)}
    assert taps["conv5"].shape[-1] == 32 and taps["fc7"].shape[-1] == 512


def test_full_width_channels_and_fc6_reshapes_to_caffenet():
    enc = nnx.eval_shape(lambda: alexnet.AlexNetBN(rngs=nnx.Rngs(0)))
    assert enc.channels == {"conv1": 96, "conv2": 256, "conv3": 384, "conv4": 384,
                            "conv5": 256, "fc6": 4096, "fc7": 4096}
    # 6 x 6 x 256 = 9216 inputs per fc6 unit, as CaffeNet's fc6.
    assert int(np.prod(enc.fc6.kernel.get_value().shape[:3])) == 9216


def test_taps_are_pre_relu():
    enc = alexnet.AlexNetBN(width=0.125, rngs=nnx.Rngs(0))
    taps = enc(jax.random.normal(jax.random.key(0), (2, 64, 64, 3)))
    for name, t in taps.items():
        assert float(t.min()) < 0, name      # normalised, not rectified


@pytest.mark.parametrize("size", [227, 96, 64])
def test_heads_predict_at_image_resolution(size):
    net = MultiTaskNet(width=0.125, head_channels=8, rngs=nnx.Rngs(0))
    _, preds = net(jax.random.normal(jax.random.key(0), (2, size, size, 3)))
    assert preds["depth"].shape == (2, size, size)
    assert preds["contours"].shape == (2, size, size)
    assert preds["normals"].shape == (2, size, size, 3)
    # Unit length wherever the head's raw output is not exactly zero (a
    # freshly initialised head leaves a few pixels with all-zero inputs).
    norm = np.asarray(jnp.linalg.norm(preds["normals"], axis=-1))
    assert np.mean(np.abs(norm - 1) < 1e-4) > 0.99
    assert np.all((np.abs(norm - 1) < 1e-4) | (norm == 0))


def test_task_subsets_are_configuration():
    net = MultiTaskNet(tasks=("normals",), width=0.125, head_channels=8,
                       norm="group", rngs=nnx.Rngs(0))
    _, preds = net(jnp.zeros((1, 64, 64, 3)))
    assert set(preds) == {"normals"}
    with pytest.raises(ValueError, match="non-empty subset"):
        MultiTaskNet(tasks=(), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="non-empty subset"):
        MultiTaskNet(tasks=("edges",), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="valid: \\('batch', 'group'\\)"):
        MultiTaskNet(norm="layer", rngs=nnx.Rngs(0))


def test_discriminator_patch_map_on_conv5():
    d = PatchDiscriminator(32, width=0.125, rngs=nnx.Rngs(0))
    assert d(jnp.zeros((2, 13, 13, 32))).shape == (2, 6, 6)
    # Any tapped layer: a larger map gives more patches.
    d1 = PatchDiscriminator(12, width=0.125, rngs=nnx.Rngs(0))
    assert d1(jnp.zeros((2, 56, 56, 12))).shape == (2, 27, 27)


def test_batchnorm_uses_each_batch_statistics_in_training():
    """Per-domain statistics: in train mode a batch is normalised by itself."""
    enc = alexnet.AlexNetBN(width=0.125, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (4, 64, 64, 3))
    a = enc(x)["conv1"]
    b = enc(x * 3.0 + 1.0)["conv1"]   # an affine change of one domain's images
    # In train mode every channel comes out with zero batch mean (BN's beta
    # starts at 0), whatever the scale and shift of the input domain.
    assert float(jnp.abs(a.mean((0, 1, 2))).max()) < 1e-3
    assert float(jnp.abs(b.mean((0, 1, 2))).max()) < 1e-3
    enc.eval()
    c = enc(x * 3.0 + 1.0)["conv1"]   # running averages now: not normalised away
    assert float(jnp.abs(c.mean((0, 1, 2))).max()) > 1e-2
