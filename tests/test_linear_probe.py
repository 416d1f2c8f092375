"""Linear probes: pooling geometry, separable toy data, data sources."""

import json
import os

import jax
import numpy as np
import pytest
from helpers import ROOT, command, probe_config, run_command, write_toy_folder

from mtssl.eval import linear_probe
from mtssl.config import defaults, load_config_file
from mtssl.data import real
from mtssl.data.labeled import LabeledFolder, LabeledTfds, PhotoCrops, make_labeled


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
    with pytest.raises(ValueError, match="photos, digits, imagefolder:<path>, tfds:<name>"):
        make_labeled("places", "train", resolution=32)
    # Uncropped examples (fine-tuning's) are the regions the records are
    # resized from: as many distinct images as records, not the 12 halves.
    regions = [test.load_example(i) for i in (1, 13, 25)]
    assert [int(label) for _, label in regions] == [1, 1, 1]
    assert len({(r.shape, r.tobytes()) for r, _ in regions}) == 3
    region, _ = test.load_example(13)
    resized = real.crop_and_resize(region, 32, "resize", np.random.default_rng(0))
    assert np.abs(resized.astype(int) - b["image"].astype(int)).mean() < 3
    # Model selection: "fit" and "val" split the training region by rows, so
    # they share no pixel with each other or with test, and tile "train".
    fit = PhotoCrops(split="fit", num_records=24, resolution=32)
    val = PhotoCrops(split="val", num_records=24, resolution=32)
    assert fit[13]["label"] == val[13]["label"] == 1
    whole, top, bottom = (s._load_example(13)[0] for s in (train, fit, val))
    assert np.array_equal(np.concatenate([top, bottom]), whole)
    assert abs(bottom.shape[0] / whole.shape[0] - real.PHOTO_VAL_SHARE) < 0.01
    overlaps = {(a, b) for a in real.PHOTO_PARTS for b in real.PHOTO_PARTS
                if real.photo_parts_overlap(a, b)}
    assert overlaps == {("train", "train"), ("test", "test"), ("fit", "fit"), ("val", "val"),
                        ("train", "fit"), ("fit", "train"), ("train", "val"), ("val", "train")}
    with pytest.raises(ValueError, match="train, test, fit, val"):
        PhotoCrops(split="validation")


def test_digits_are_the_bundled_handwritten_digits_split_in_halves():
    from sklearn.datasets import load_digits
    train = make_labeled("digits", "train", resolution=16)
    test = make_labeled("digits", "test", resolution=16)
    assert (len(train), len(test)) == (898, 899) and train.class_names[3] == "3"
    # Every image once, in one split only, with its label; 0..16 -> 0..255.
    digits = load_digits()
    images = np.concatenate([train.images, test.images]).reshape(len(digits.target), -1)
    labels = np.concatenate([train.labels, test.labels])
    order = np.lexsort(images.T)
    reference = np.round(digits.images.reshape(len(digits.target), -1) * 255 / 16)
    ref_order = np.lexsort(reference.T)
    np.testing.assert_array_equal(images[order], reference[ref_order])
    np.testing.assert_array_equal(labels[order], digits.target[ref_order])
    sample = test[5]
    assert sample["image"].shape == (16, 16, 3) and sample["label"] == test.labels[5]
    assert (sample["image"][..., 0] == sample["image"][..., 2]).all()     # grey
    # Bright strokes on black, as shipped.
    assert sample["image"].max() > 200 and sample["image"].min() == 0


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


def test_command_line_contract(tiny_run, tmp_path):
    """`python -m mtssl.eval.linear_probe` with `--config.x=y` overrides probes the
    checkpoint it is given and writes what `linear_probe.run` returns for
    the same settings."""
    write_toy_folder(tmp_path / "toy", n_per_class=10)
    overrides = {"checkpoint": str(tiny_run[0]), "dataset": f"imagefolder:{tmp_path / 'toy'}",
                 "batch_size": 8, "epochs": 2, "layers": ("conv2",)}
    proc = run_command(command(tmp_path / "out", overrides, "mtssl.eval.linear_probe",
                               "configs/linear_probe.py"))
    saved = json.loads((tmp_path / "out" / "probe.json").read_text())
    config = load_config_file(os.path.join(ROOT, "configs/linear_probe.py"))
    config.update(overrides)
    in_process = linear_probe.run(config, str(tmp_path / "in"))
    assert set(saved) == {"conv2"} and saved["conv2"]["dims"] == in_process["conv2"]["dims"]
    for key in ("accuracy", "val_accuracy", "l2"):
        assert saved["conv2"][key] == pytest.approx(in_process["conv2"][key], abs=1e-6), key
    assert saved["conv2"]["accuracy"] >= 0.9          # two colours: separable
    run_info = json.loads((tmp_path / "out" / "probe_run.json").read_text())
    assert run_info["checkpoint_step"] == 2 and run_info["image_size"] == 64
    assert "| conv2 |" in proc.stdout


def test_probe_protocol_options(tmp_path):
    """Post-ReLU taps (the default) read the rectified features; AdaBN's
    statistics are the probe images' own; grayscale probes luma images."""
    from mtssl.data.pipeline import normalize_images
    from mtssl.pretrained import adapt_statistics, random_encoder

    assert (linear_probe.to_luma(np.uint8([[[200, 50, 40]]]))
            == np.uint8([[[94, 94, 94]]])).all()           # .299 R + .587 G + .114 B
    model = defaults()
    model.model.update(dict(probe_config().model))
    encoder = random_encoder(model)
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 64, 64, 3), dtype=np.uint8)
    batches = [normalize_images(b) for b in images]
    adapted = adapt_statistics(encoder, batches)
    # conv1's statistics: those of its input (the convolution's output) over
    # all 16 images, which no earlier normalisation changes.
    conv = jax.vmap(lambda x: jax.lax.conv_general_dilated(
        x, encoder.params["conv1"]["kernel"][...], (4, 4), ((2, 2), (2, 2)),
        dimension_numbers=("NHWC", "HWIO", "NHWC")))(np.stack(batches))
    conv = np.asarray(conv).reshape(-1, conv.shape[-1])
    stats = adapted.stats["norms"]["conv1"]
    np.testing.assert_allclose(stats["mean"][...], conv.mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(stats["var"][...], conv.var(0), rtol=1e-3, atol=1e-4)
    assert not np.allclose(encoder.stats["norms"]["conv5"]["var"][...],
                           adapted.stats["norms"]["conv5"]["var"][...])

    write_toy_folder(tmp_path / "toy", n_per_class=10)
    common = dict(dataset=f"imagefolder:{tmp_path / 'toy'}", checkpoint="", epochs=1,
                  layers=("conv1",))
    post = linear_probe.run(probe_config(**common), str(tmp_path / "post"))
    other = linear_probe.run(probe_config(taps="pre_relu", bn_stats="probe_images",
                                          grayscale=True, **common), str(tmp_path / "other"))
    assert post["conv1"]["protocol"] == {"taps": "post_relu", "bn_stats": "running",
                                         "grayscale": False}
    assert other["conv1"]["protocol"] == {"taps": "pre_relu", "bn_stats": "probe_images",
                                          "grayscale": True}
    assert "grayscale images" in (tmp_path / "other" / "probe.md").read_text()
    with pytest.raises(ValueError, match="post_relu, pre_relu"):
        linear_probe.run(probe_config(taps="relu", **common), str(tmp_path / "bad"))


@pytest.mark.parametrize("field, value, message", [
    ("crop", "centre", "random_crop, center_crop, resize"),
    ("l2", (1e-4, -1.0), "weights >= 0"),
    ("val_fraction", 1.0, r"in \(0, 1\)"),
    ("epochs", 0, ">= 1"),
])
def test_bad_probe_config_names_the_valid_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        linear_probe.validate(probe_config(**{field: value}))
