"""Encoder export: BatchNorm folded into plain convolutions reproduces the encoder."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest
from helpers import ROOT

from mtssl.config import defaults
from mtssl.export import npz_forward, save_npz
from mtssl.pretrained import random_encoder


def trained_looking_encoder(encoder_name: str, norm: str = "batch"):
    """A random encoder whose BatchNorm statistics and affine parameters are
    far from their initial values, so folding has something to fold."""
    c = defaults()
    c.model.update(encoder=encoder_name, width=0.125, norm=norm)
    c.image_size = 64
    enc = random_encoder(c, seed=1)
    rng = np.random.default_rng(0)

    def perturb(path, x):
        name = jax.tree_util.keystr(path)
        if "var" in name:
            return rng.uniform(0.2, 3.0, x.shape).astype(np.float32)
        if "mean" in name or ("bias" in name and "norm" in name):
            return rng.normal(0, 0.5, x.shape).astype(np.float32)
        if "scale" in name:
            return rng.uniform(0.5, 1.5, x.shape).astype(np.float32)
        return x
    return dataclasses.replace(
        enc, params=jax.tree_util.tree_map_with_path(perturb, enc.params),
        stats=jax.tree_util.tree_map_with_path(perturb, enc.stats), _compiled={})


@pytest.mark.parametrize("name", ["alexnet", "resnet18"])
def test_exported_npz_reproduces_every_tap(name, tmp_path):
    encoder = trained_looking_encoder(name)
    path = tmp_path / "encoder.npz"
    save_npz(encoder, str(path))
    weights = np.load(path)               # plain arrays: no pickle needed
    meta = json.loads(str(weights["meta"]))
    assert meta["encoder"] == name and meta["taps"] == list(encoder.layers)
    assert not any("norm" in k for k in weights.files)   # folded away
    images = np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3)).astype(np.uint8)
    expected = encoder.features(images)
    from mtssl.data.pipeline import normalize_images
    got = jax.device_get(npz_forward(weights, normalize_images(images)))
    assert set(got) == set(expected)
    for tap, value in expected.items():
        scale = np.abs(value).max()
        np.testing.assert_allclose(got[tap], value, atol=2e-4 * scale, err_msg=tap)


def test_group_norm_encoders_are_refused():
    from mtssl.export import export_weights
    with pytest.raises(ValueError, match="BatchNorm"):
        export_weights(trained_looking_encoder("alexnet", norm="group"))


def test_export_command_writes_the_checkpoints_encoder(tiny_run, tmp_path):
    from mtssl import export
    from mtssl.config import load_config_file
    from mtssl.pretrained import load_encoder
    config = load_config_file(os.path.join(ROOT, "configs/export.py"))
    config.out = str(tmp_path / "enc.npz")
    assert export.run(config, str(tiny_run[0])) == config.out     # what the command runs
    weights = np.load(config.out)
    encoder = load_encoder(tiny_run[0])
    kernel = np.asarray(encoder.params["conv1"]["kernel"][...])
    assert weights["conv1/kernel"].shape == kernel.shape
    assert json.loads(str(weights["meta"]))["taps"] == list(encoder.layers)
