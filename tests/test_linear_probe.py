"""Linear probes: pooling geometry, separable toy data, data sources."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mtssl import linear_probe
from mtssl.config import load_config_file
from mtssl.data.labeled import LabeledFolder, LabeledTfds, PhotoCrops, make_labeled

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def probe_config(**overrides):
    c = load_config_file(os.path.join(ROOT, "configs/linear_probe.py"))
    c.model.width = 0.125
    c.image_size, c.batch_size, c.epochs = 64, 16, 8
    c.learning_rate = 1e-2
    c.layers = ("conv1", "conv3", "conv5")
    for key, value in overrides.items():
        c[key] = value
    return c


def test_pooling_grid_gives_about_9k_features_per_layer():
    # Full-width AlexNet at 227 px (Zhang et al.'s sizes).
    assert linear_probe.pooled_grid(96, 56, 9216) == 10        # 9600
    assert linear_probe.pooled_grid(256, 27, 9216) == 6        # 9216
    assert linear_probe.pooled_grid(384, 13, 9216) == 5        # 9600
    assert linear_probe.pooled_grid(256, 13, 9216) == 6        # 9216
    assert linear_probe.pooled_grid(4096, 13, 9216) == 2       # 16384 (nearest square)
    assert linear_probe.pooled_grid(32, 3, 9216) == 3          # capped by the map
    x = np.arange(2 * 5 * 5 * 1, dtype=np.float32).reshape(2, 5, 5, 1)
    pooled = np.asarray(linear_probe.adaptive_avg_pool(x, 2))
    # Bins [0, 3) and [2, 5) in each direction (overlapping by one, as torch's).
    np.testing.assert_allclose(pooled[0, 0, 0, 0], x[0, :3, :3, 0].mean())
    np.testing.assert_allclose(pooled[1, 1, 0, 0], x[1, 2:, :3, 0].mean())


def write_toy_folder(root, n_per_class=24, size=40):
    """Two colour classes with noise and random brightness: linearly separable."""
    rng = np.random.default_rng(0)
    for label, colour in (("blue", (30, 60, 200)), ("red", (200, 50, 40))):
        (root / label).mkdir(parents=True)
        for i in range(n_per_class):
            img = np.clip(np.array(colour) * rng.uniform(0.6, 1.2)
                          + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / label / f"{i:03d}.png")


def test_probe_separates_a_linearly_separable_folder(tmp_path):
    write_toy_folder(tmp_path / "toy")
    train = LabeledFolder(root=tmp_path / "toy", split="train", resolution=32)
    test = LabeledFolder(root=tmp_path / "toy", split="test", resolution=32)
    assert train.class_names == ("blue", "red")
    assert not set(map(str, train.files)) & set(map(str, test.files))
    assert len(train) + len(test) == 48 and len(test) > 0
    config = probe_config(dataset=f"imagefolder:{tmp_path / 'toy'}", checkpoint="")
    results = linear_probe.run(config, str(tmp_path / "out"))
    saved = json.loads((tmp_path / "out" / "probe.json").read_text())
    assert set(saved) == {"conv1", "conv3", "conv5"}
    for layer, r in saved.items():
        assert r["accuracy"] == results[layer]["accuracy"]
        assert r["accuracy"] >= 0.95, (layer, r)        # random features suffice here
        assert r["l2"] in config.l2 and r["dims"] > 0
    assert "| conv5 |" in (tmp_path / "out" / "probe.md").read_text()


def test_photo_crops_are_labelled_and_disjoint():
    train = PhotoCrops(split="train", num_records=24, resolution=32)
    test = PhotoCrops(split="test", num_records=24, resolution=32)
    a, b = train[13], test[13]
    assert a["label"] == b["label"] == 1 and a["image"].shape == (32, 32, 3)
    assert not np.array_equal(a["image"], b["image"])
    with pytest.raises(ValueError, match="photos, imagefolder:<path>, tfds:<name>"):
        make_labeled("places", "train", resolution=32)


def test_tfds_classification_and_multilabel_through_mock_data():
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        cifar = LabeledTfds(name="cifar10", split="train", resolution=24)
        assert len(cifar) == 6 and len(cifar.class_names) == 10 and not cifar.multilabel
        sample = cifar[3]
        assert sample["image"].shape == (24, 24, 3) and sample["label"].dtype == np.int32
        voc = LabeledTfds(name="voc/2007", split="train", resolution=24)
        assert voc.multilabel and len(voc.class_names) == 20
        hot = voc[0]["label"]
        record = voc._source[0]
        # Present without "difficult" objects: 1; only as difficult: ignored (-1).
        certain = set(np.asarray(record["labels_no_difficult"]).tolist())
        uncertain = set(np.asarray(record["labels"]).tolist()) - certain
        assert hot.shape == (20,) and set(np.unique(hot)) <= {-1.0, 0.0, 1.0}
        assert {int(i) for i in np.flatnonzero(hot == 1)} == certain
        assert {int(i) for i in np.flatnonzero(hot == -1)} == uncertain


def test_missing_tfds_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="not available locally"):
        LabeledTfds(name="cifar10", split="train", data_dir=str(tmp_path))


def test_command_line_contract(tmp_path):
    write_toy_folder(tmp_path / "toy", n_per_class=10)
    proc = subprocess.run(
        [sys.executable, "-m", "mtssl.linear_probe", "--config=configs/linear_probe.py",
         f"--workdir={tmp_path / 'out'}", "--config.checkpoint=",
         f"--config.dataset=imagefolder:{tmp_path / 'toy'}", "--config.model.width=0.125",
         "--config.image_size=64", "--config.batch_size=8", "--config.epochs=2",
         "--config.layers=('conv2',)"],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    saved = json.loads((tmp_path / "out" / "probe.json").read_text())
    assert set(saved) == {"conv2"} and 0.0 <= saved["conv2"]["accuracy"] <= 1.0
    assert "| conv2 |" in proc.stdout
