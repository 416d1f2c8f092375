"""Model shapes, the paper's geometry, task subsets and norm options."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mtssl.models import (
    MultiTaskNet,
    PatchDiscriminator,
    alexnet,
    encoder_taps,
    cpu_ops,
    resnet,
)
from mtssl.models.cpu_ops import (
    conv_transpose_2x,
    dilated_conv,
    dilated_conv_im2col,
    pointwise_conv,
    strided_conv,
    strided_conv_space_to_depth,
)
from mtssl.models.layers import BatchNorm


def abstract_outputs(build, *input_shape):
    """Output shapes of build()(zeros(input_shape)), without computing them."""
    return nnx.eval_shape(lambda: build()(jnp.zeros(input_shape)))


def apply(module, x):
    """module(x), compiled: one program instead of an eager op per primitive."""
    return nnx.jit(lambda m, x: m(x))(module, x)


def test_alexnet_geometry_at_227():
    taps = abstract_outputs(lambda: alexnet.AlexNetBN(width=0.125, rngs=nnx.Rngs(0)),
                            2, 227, 227, 3)
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
    taps = apply(enc, jax.random.normal(jax.random.key(0), (2, 64, 64, 3)))
    for name, t in taps.items():
        assert float(t.min()) < 0, name      # normalised, not rectified


@pytest.mark.parametrize("size", [227, 96, 64])
def test_heads_predict_at_image_resolution(size):
    net = MultiTaskNet(width=0.125, head_channels=8, rngs=nnx.Rngs(0))
    _, preds = apply(net, jax.random.normal(jax.random.key(0), (2, size, size, 3)))
    assert preds["depth"].shape == (2, size, size)
    assert preds["contours"].shape == (2, size, size)
    assert preds["normals"].shape == (2, size, size, 3)
    # Unit length wherever the head's raw output is not exactly zero (a
    # freshly initialised head leaves a few pixels with all-zero inputs).
    norm = np.asarray(jnp.linalg.norm(preds["normals"], axis=-1))
    assert np.mean(np.abs(norm - 1) < 1e-4) > 0.99
    assert np.all((np.abs(norm - 1) < 1e-4) | (norm == 0))


def test_task_subsets_are_configuration():
    _, preds = abstract_outputs(lambda: MultiTaskNet(
        tasks=("normals",), width=0.125, head_channels=8, norm="group", rngs=nnx.Rngs(0)),
        1, 64, 64, 3)
    assert set(preds) == {"normals"}
    with pytest.raises(ValueError, match="non-empty subset"):
        MultiTaskNet(tasks=(), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="non-empty subset"):
        MultiTaskNet(tasks=("edges",), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="valid: \\('batch', 'group'\\)"):
        MultiTaskNet(norm="layer", rngs=nnx.Rngs(0))


def test_discriminator_patch_map_on_conv5():
    assert abstract_outputs(lambda: PatchDiscriminator(32, width=0.125, rngs=nnx.Rngs(0)),
                            2, 13, 13, 32).shape == (2, 6, 6)
    # Any tapped layer: a larger map gives more patches.
    assert abstract_outputs(lambda: PatchDiscriminator(12, width=0.125, rngs=nnx.Rngs(0)),
                            2, 56, 56, 12).shape == (2, 27, 27)


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


@pytest.mark.parametrize("depth,expansion", [("resnet18", 1), ("resnet50", 4)])
def test_resnet_taps_and_dilated_last_stage(depth, expansion):
    enc = resnet.ResNetBN(depth=depth, width=0.125, rngs=nnx.Rngs(0))
    taps = apply(enc, jax.random.normal(jax.random.key(0), (2, 227, 227, 3)))
    assert tuple(taps) == encoder_taps(depth) == resnet.TAPS
    sizes = {k: v.shape[1:3] for k, v in taps.items()}
    # Output stride 16 at conv5 (dilated), not 32: a 15x15 map like AlexNet's 13x13.
    assert sizes == {"conv1": (114, 114), "conv2": (57, 57), "conv3": (29, 29),
                     "conv4": (15, 15), "conv5": (15, 15)}
    assert taps["conv5"].shape[-1] == 64 * expansion == enc.out_features
    assert float(taps["conv5"].min()) < 0     # pre-ReLU


def test_multitask_net_on_resnet_and_unknown_encoder():
    taps, preds = abstract_outputs(lambda: MultiTaskNet(
        encoder="resnet18", width=0.125, head_channels=8, rngs=nnx.Rngs(0)), 2, 96, 96, 3)
    assert "fc7" not in taps and preds["normals"].shape == (2, 96, 96, 3)
    with pytest.raises(ValueError, match="alexnet, resnet18, resnet50"):
        MultiTaskNet(encoder="vgg16", rngs=nnx.Rngs(0))


def _value_and_grads(f, x, w):
    def loss(x, w):
        y = f(x, w)
        return jnp.sum(y * jnp.cos(jnp.arange(y.size).reshape(y.shape)))
    return f(x, w), jax.grad(loss, argnums=(0, 1))(x, w)


@pytest.mark.parametrize("k", [3, 5])
def test_phase_transposed_conv_equals_conv_transpose(k):
    module = nnx.ConvTranspose(6, 5, (k, k), strides=(2, 2), padding="VALID",
                               use_bias=False, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 7, 9, 6))
    plain = lambda x, w: jax.lax.conv_transpose(
        x, w, (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    w = module.kernel[...]
    np.testing.assert_allclose(plain(x, w), module(x), atol=1e-6)
    y0, (gx0, gw0) = _value_and_grads(plain, x, w)
    y1, (gx1, gw1) = _value_and_grads(conv_transpose_2x, x, w)
    assert y1.shape == (2, 2 * 6 + k, 2 * 8 + k, 5)
    for a, b in ((y0, y1), (gx0, gx1), (gw0, gw1)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_transposed_conv_in_batch_chunks_equals_one_product(monkeypatch):
    x = jax.random.normal(jax.random.key(1), (6, 5, 4, 3))
    w = jax.random.normal(jax.random.key(2), (5, 5, 3, 4))
    y0, g0 = _value_and_grads(conv_transpose_2x, x, w)
    # 3 examples' per-tap arrays per chunk: two chunks of the batch.
    monkeypatch.setattr(cpu_ops, "_COLS_CHUNK_BYTES", 3 * 5 * 4 * 25 * 4 * 4)
    assert cpu_ops._batch_chunks(6, 5 * 4 * 25 * 4 * 4, devices=1) == 2
    # Over devices, a chunk keeps a multiple of the device count (so it stays
    # sharded), the limit counting one device's share.
    assert cpu_ops._batch_chunks(16, 3 * 5 * 4 * 25 * 4 * 4, devices=4) == 4
    assert cpu_ops._batch_chunks(16, 5 * 4 * 25 * 4 * 4, devices=4) == 2
    assert cpu_ops._batch_chunks(16, 5 * 4 * 25 * 4 * 4, devices=2) == 4
    assert cpu_ops._batch_chunks(6, 1, devices=4) == 1
    jaxpr = str(jax.make_jaxpr(conv_transpose_2x)(x, w))
    assert "scan" in jaxpr or "while" in jaxpr
    y1, g1 = _value_and_grads(conv_transpose_2x, x, w)
    for a, b in zip((y0, *g0), (y1, *g1)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shift,dtype", [(0.0, None), (5.0, None), (-20.0, None),
                                         (2.0, jnp.bfloat16)])
def test_batchnorm_backward_equals_autodiff_of_nnx_batchnorm(shift, dtype):
    """Outputs, gradients (input, scale, bias) and running statistics of the
    written-out training backward against Flax's BatchNorm under autodiff,
    with channel means far from zero (where a careless formula cancels)."""
    shape = (4, 7, 5, 6)
    x = jax.random.normal(jax.random.key(0), shape) * 2.0 + shift
    cot = jax.random.normal(jax.random.key(1), shape)
    ours = BatchNorm(6, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=nnx.Rngs(0))
    ours.scale[...] = jax.random.normal(jax.random.key(2), (6,))
    ours.bias[...] = jax.random.normal(jax.random.key(3), (6,))
    plain = nnx.BatchNorm(6, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=nnx.Rngs(0))
    plain.scale[...], plain.bias[...] = ours.scale[...], ours.bias[...]

    def loss(norm, x):
        y = norm(x)
        return jnp.sum(y.astype(jnp.float32) * cot), y

    results = []
    for norm in (plain, ours):
        (_, y), (g_norm, g_x) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
            norm, x)
        results.append((y, g_x, g_norm.scale[...], g_norm.bias[...], norm.mean[...],
                        norm.var[...]))
        assert y.dtype == (dtype or jnp.float32)
    tol = 1e-5 if dtype is None else 2e-2
    for a, b in zip(*results):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        np.testing.assert_allclose(b, a, rtol=tol, atol=tol * np.abs(a).max())
    # Inference mode is the parent's: running statistics, same output.
    ours.eval(), plain.eval()
    np.testing.assert_array_equal(ours(x), plain(x))
    # So are the options the project does not use.
    bare = dict(use_scale=False, use_bias=False, dtype=dtype, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(BatchNorm(6, **bare)(x), nnx.BatchNorm(6, **bare)(x))


# fc6 on a 5x5 map (96 px: the outer taps only ever read padding, and are
# left out), on 5x6 (rows only), on 13x13 (227 px: every tap used).
@pytest.mark.parametrize("k,pad,dilation,size", [
    (6, 5, 2, (5, 5)), (6, 5, 2, (5, 6)), (6, 5, 2, (13, 13)), (3, 2, 2, (5, 6))])
def test_im2col_dilated_conv_equals_the_module(k, pad, dilation, size):
    conv = nnx.Conv(6, 7, (k, k), padding=((pad, pad), (pad, pad)),
                    kernel_dilation=dilation, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, *size, 6))
    plain = lambda x, w: jax.lax.conv_general_dilated(
        x, w, (1, 1), ((pad, pad), (pad, pad)), rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC")) + conv.bias[...]

    def rewritten(x, w):
        return dilated_conv_im2col(x, w, conv.padding, (dilation, dilation)) + conv.bias[...]

    np.testing.assert_allclose(dilated_conv(conv, x), conv(x), rtol=1e-5, atol=1e-5)
    w = conv.kernel[...]
    y0, g0 = _value_and_grads(plain, x, w)
    y1, g1 = _value_and_grads(rewritten, x, w)
    for a, b in zip((y0, *g0), (y1, *g1)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


# conv1 at 96 px (the padded input is whole blocks) and at 227 px (one row
# of blocks padded further); a stride that leaves the last input rows unread
# (cut off); unequal strides, paddings and kernel sides; the discriminator's
# VALID 3x3 stride 2 on a 5x5 map; SAME padding.
@pytest.mark.parametrize("k,stride,pad,size", [
    ((11, 11), (4, 4), ((2, 2), (2, 2)), (96, 96)),
    ((11, 11), (4, 4), ((2, 2), (2, 2)), (227, 227)),
    ((2, 2), (3, 3), ((0, 0), (0, 0)), (13, 13)),
    ((3, 5), (2, 3), ((1, 0), (2, 1)), (9, 14)),
    ((3, 3), (2, 2), "VALID", (5, 5)),           # the discriminator's conv1
    ((7, 7), (2, 2), "SAME", (15, 16))])
def test_space_to_depth_strided_conv_equals_the_module(k, stride, pad, size):
    conv = nnx.Conv(3, 7, k, strides=stride, padding=pad, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, *size, 3))
    plain = lambda x, w: jax.lax.conv_general_dilated(
        x, w, stride, pad, dimension_numbers=("NHWC", "HWIO", "NHWC")) + conv.bias[...]

    def rewritten(x, w):
        explicit = (jax.lax.padtype_to_pads(size, k, stride, pad)
                    if isinstance(pad, str) else pad)
        return strided_conv_space_to_depth(x, w, stride, explicit) + conv.bias[...]

    def module_form(forward):      # the module's fields, its kernel traced
        def apply(x, w):
            layer = types.SimpleNamespace(kernel=w, bias=conv.bias[...], dtype=None,
                                          strides=conv.strides, padding=conv.padding)
            return strided_conv(layer, x, forward=forward)
        return apply

    w = conv.kernel[...]
    y0, g0 = _value_and_grads(plain, x, w)
    # The rewrite, and the module on CPU both ways: the rewrite's forward, or
    # XLA's forward and kernel gradient with the rewrite's input gradient.
    for form in (rewritten, module_form("space_to_depth"), module_form("plain")):
        y1, g1 = _value_and_grads(form, x, w)
        assert y1.shape == y0.shape
        for a, b in zip((y0, *g0), (y1, *g1)):    # sums of up to ~10^5 float32 terms
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * float(np.abs(b).max()))


@pytest.mark.parametrize("encoder", ["alexnet", "resnet18"])
def test_upto_stops_at_the_named_tap(encoder):
    net = MultiTaskNet(encoder=encoder, width=0.125, head_channels=8, rngs=nnx.Rngs(0))
    net.eval()        # running statistics: both calls see identical weights
    x = jax.random.normal(jax.random.key(0), (2, 96, 96, 3))
    full = net.encoder(x)
    part = net.encoder(x, upto="conv3")
    assert tuple(part) == ("conv1", "conv2", "conv3")
    for name in part:
        np.testing.assert_array_equal(part[name], full[name])


def test_pointwise_conv_equals_the_module():
    conv = nnx.Conv(6, 7, (1, 1), rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 5, 4, 6))
    np.testing.assert_allclose(pointwise_conv(conv, x), conv(x), rtol=1e-5, atol=1e-6)
