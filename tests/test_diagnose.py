"""Checkpoint diagnostics: each number against a case whose answer is known."""

import json
import os
import shutil

import numpy as np
import pytest
from helpers import ROOT

from mtssl.config import load_config_file
from mtssl.eval import diagnose


def test_colour_share_and_variances_of_known_cases():
    grey = np.ones((3, 3, 3, 2))
    assert diagnose.colour_share(grey) == pytest.approx(0.0)
    opponent = np.zeros((1, 1, 3, 1))
    opponent[..., 0, 0], opponent[..., 1, 0] = 1.0, -1.0      # red minus green
    assert diagnose.colour_share(opponent) == pytest.approx(1.0)
    same = np.broadcast_to(np.arange(6.0).reshape(1, 2, 3), (4, 2, 3))
    assert diagnose._across_images_variance(same) == 0.0
    two = np.stack([np.zeros((2, 2)), np.full((2, 2), 2.0)])
    assert diagnose._across_images_variance(two) == pytest.approx(1.0)
    mask = np.ones((2, 2, 2), bool)
    mask[1, 0, 0] = False      # that pixel has one valid image: left out
    assert diagnose._across_images_variance(two, mask) == pytest.approx(1.0)


def test_trivial_semantic_predictor_costs_the_entropy_of_the_class_shares():
    import types
    labels = np.zeros((2, 4, 4), np.int64)
    labels[0, :2] = 3                       # classes 0 and 3, half each...
    labels[1, 0, 0] = -1                    # ...and one unlabelled pixel
    batch = {"depth": np.ones((2, 4, 4), np.float32),
             "normals": np.zeros((2, 4, 4, 3), np.float32), "contours": np.zeros((2, 4, 4)),
             "semantics": labels}
    shares = diagnose.class_shares(labels)
    assert shares[3] == pytest.approx(8 / 31) and shares.sum() == pytest.approx(1.0)
    static = types.SimpleNamespace(tasks=("semantics",))
    entropy = -np.sum(shares[shares > 0] * np.log(shares[shares > 0]))
    assert diagnose.trivial_losses(batch, static)["semantics"] == pytest.approx(
        entropy, rel=1e-4)


def test_contour_oracle_is_exact_at_cell_one_and_trivial_at_image_size():
    rng = np.random.default_rng(0)
    contours = rng.random((3, 32, 32)) < 0.1
    for weighting in ("reference", "hed", "none"):
        exact = diagnose.contour_oracle_loss(contours, weighting, cell=1)
        whole = diagnose.contour_oracle_loss(contours, weighting, cell=32)
        coarse = diagnose.contour_oracle_loss(contours, weighting, cell=8)
        assert exact < 1e-3 < coarse <= whole, weighting
    # One cell per image: the per-image constant; with the reference weights
    # that is probability 0.5, i.e. log 2 per pixel, twice over the balance.
    share = contours.mean((1, 2))
    assert diagnose.contour_oracle_loss(contours, "reference", cell=32) == pytest.approx(
        np.mean(2 * (1 - share) * np.log(2.0)), rel=1e-3)


def test_diagnose_a_checkpoint(tiny_run, tmp_path, capsys):
    workdir = tmp_path / "run"
    shutil.copytree(tiny_run[0], workdir)
    config = load_config_file(os.path.join(ROOT, "configs/diagnose.py"))
    config.num_images = 4
    config.num_photo_crops = 24
    report = diagnose.run(config, str(workdir))            # what the command runs
    assert json.loads((workdir / "diagnose_2.json").read_text()) == json.loads(
        json.dumps(report))
    assert "| g/encoder/conv1 |" in capsys.readouterr().out
    assert report["step"] == 2
    # Two Adam steps of lr 1e-3 move every G kernel a little, from the run's
    # own initialisation.
    conv1 = report["weights"]["g/encoder/conv1"]
    assert conv1["ratio"] != 1.0 and conv1["ratio"] == pytest.approx(1.0, abs=0.1)
    assert any(k.startswith("d/") for k in report["weights"])
    assert set(report["activations"]) == {"synthetic", "real"}
    for domain in report["activations"].values():
        assert set(domain) == {"conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"}
        assert all(0.0 <= v["dead_share"] <= 1.0 for v in domain.values())
        assert all(np.isfinite(v["mean_offset_std"]) for v in domain.values())
    share = report["conv1_colour_share"]
    assert 0 < share["now"] < 1 and share["now"] == pytest.approx(share["initial"], abs=0.05)
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert report["discriminator"]["d_accuracy_last"] == rows[-1]["d_accuracy"]
    # After 2 steps no head beats its trivial predictor by much, and the
    # trivial losses are what they are by definition: e.g. contours at a
    # constant 0.5 pay log 2 per pixel with the balanced weights.
    for task in ("depth", "normals", "contours"):
        t = report["tasks"][task]
        assert t["ratio"] == pytest.approx(t["loss"] / t["trivial_loss"])
        assert t["ratio"] > 0.5
    assert np.log(2.0) < report["tasks"]["contours"]["trivial_loss"] < 2 * np.log(2.0)
    for task, dep in report["input_dependence"].items():
        assert dep["prediction_var_synthetic"] >= 0 and dep["target_var_synthetic"] > 0, task
        assert "prediction_var_real" in dep
    assert 0 < report["contours_coarse_oracle_loss"] < report["tasks"]["contours"]["trivial_loss"]
    features = report["features"]
    assert features["num_photo_crops"] == 24
    for weights in ("now", "initial"):
        assert set(features[weights]) == set(report["activations"]["real"])
        for tap in features[weights].values():
            assert 0.0 < tap["photo_share"] <= 1.0
            assert 1.0 <= tap["effective_rank"] <= tap["channels"]
    # Two small steps leave the features close to the initial weights' ones.
    assert features["now"]["conv1"]["photo_share"] == pytest.approx(
        features["initial"]["conv1"]["photo_share"], abs=0.05)
    text = diagnose.summary(report)
    assert "| g/encoder/conv1 |" in text and "| contours |" in text
    assert "| conv5 |" in text
    config.num_photo_crops = 12
    with pytest.raises(ValueError, match="num_photo_crops=12; it must be >= 24"):
        diagnose.run(config, str(workdir))


def test_effective_rank_and_photo_share_by_hand():
    # Two uncorrelated channels of equal variance: correlation = identity.
    two = np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert diagnose.effective_rank(two) == pytest.approx(2.0)
    # A third channel that copies the first (scaled) adds eigenvalue shares
    # 2/3, 1/3, 0; a constant channel is left out.
    three = np.column_stack([two, 5 * two[:, 0], np.full(4, 7.0)])
    p = np.array([2 / 3, 1 / 3])
    assert diagnose.effective_rank(three) == pytest.approx(np.exp(-np.sum(p * np.log(p))))
    assert diagnose.effective_rank(np.ones((4, 3))) == 0.0
    # Rows constant within each group: all variance is between groups; group
    # means that are all equal: none of it is.
    groups = np.array([0, 0, 1, 1])
    assert diagnose.between_group_share(
        np.array([[1.0, 2.0], [1.0, 2.0], [3.0, 0.0], [3.0, 0.0]]), groups) == pytest.approx(1.0)
    assert diagnose.between_group_share(
        np.array([[1.0], [3.0], [3.0], [1.0]]), groups) == pytest.approx(0.0)
    # Half and half: group means +-1 around 0, within-group deviations +-1.
    assert diagnose.between_group_share(
        np.array([[0.0], [2.0], [-2.0], [0.0]]), groups) == pytest.approx(0.5)
