"""Fine-tuning: test-time crops, the optimizer split, learning, VOC through
TFDS mock data, exact resume."""

import json
import os
import signal
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from helpers import ROOT, command, write_toy_folder, wait_for_row

from mtssl.eval import finetune
from mtssl.config import load_config_file
from mtssl.data.labeled import LabeledTfds

def finetune_config(**overrides):
    c = load_config_file(os.path.join(ROOT, "configs/finetune.py:photos"))
    c.model.width = 0.125
    c.image_size, c.batch_size, c.num_threads = 64, 8, 2
    c.log_every, c.save_every = 1, 2
    for key, value in overrides.items():
        c[key] = value
    return c


def test_ten_crops_are_corners_centre_and_mirrors():
    image = np.arange(12 * 12 * 3, dtype=np.uint8).reshape(12, 12, 3)
    crops = finetune.ten_crops(image, size=8, scale=1.5)     # 12 px: no resize
    assert crops.shape == (10, 8, 8, 3)
    np.testing.assert_array_equal(crops[0], image[:8, :8])
    np.testing.assert_array_equal(crops[3], image[4:, 4:])
    np.testing.assert_array_equal(crops[4], image[2:10, 2:10])
    np.testing.assert_array_equal(crops[5:], crops[:5, :, ::-1])
    whole = finetune.ten_crops(image, size=8, scale=1.0)     # resized to the crop
    np.testing.assert_array_equal(whole[:5], np.broadcast_to(whole[0], (5, 8, 8, 3)))
    assert not np.array_equal(whole[0], crops[0])


def test_new_classifier_learns_at_its_multiple_of_the_rate():
    config = finetune_config(weight_decay=0.0, momentum=0.0, learning_rate=0.1,
                             classifier_lr_multiplier=10.0, grad_clip=1e9)
    tx = finetune.make_optimizer(config)
    params = {"encoder": {"w": jnp.zeros(3)}, "classifier": {"w": jnp.zeros(2)}}
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["encoder"]["w"], -0.1, rtol=1e-6)
    np.testing.assert_allclose(updates["classifier"]["w"], -1.0, rtol=1e-6)


@pytest.fixture(scope="module")
def grown_encoder():
    """(static, state, params at init) of a small random encoder whose convs
    are scaled by 1.5..2.1, as pretraining grows them."""
    from mtssl.pretrained import random_encoder
    config = finetune_config()
    pre = load_config_file(os.path.join(ROOT, "configs/pretrain.py:runlocal"))
    pre.model.width, pre.image_size = 0.125, 64
    encoder = random_encoder(pre, seed=0)
    static, state = finetune.create(config, encoder, 3, False, 64)
    initial = state.params
    groups = sorted(finetune.conv_squared_norms(initial))
    grown = finetune.scale_convs(initial, {g: 1.5 + 0.1 * i for i, g in enumerate(groups)})
    return static, state.replace(params=grown), initial


def test_rescaling_keeps_the_function_and_restores_init_norms(grown_encoder):
    static, state, initial = grown_encoder
    factors = finetune.init_norm_factors(state.params, initial)
    assert len(factors) == 7 and all(0.45 < a < 0.7 for a in factors.values())
    rescaled = finetune.scale_convs(state.params, factors)
    for group, sq in finetune.conv_squared_norms(rescaled).items():
        np.testing.assert_allclose(sq, finetune.conv_squared_norms(initial)[group], rtol=1e-5)
    assert finetune.init_norm_factors(initial, initial) == pytest.approx(
        dict.fromkeys(factors, 1.0))
    batch = {"image": jax.random.normal(jax.random.key(1), (8, 64, 64, 3)),
             "label": jnp.arange(8) % 3}
    loss = jax.jit(lambda p: finetune.training_loss(p, state.stats, batch, state.rng,
                                                    static=static)[0])
    np.testing.assert_allclose(loss(rescaled), loss(state.params), rtol=1e-4)

    # Krähenbühl's calibration: one pass equalises every conv's change rate.
    measure = jax.jit(lambda s: finetune.squared_gradient_norms(s, batch, static=static))
    grads = {g: float(v) for g, v in jax.device_get(measure(state)).items()}
    calibrated = state.replace(params=finetune.scale_convs(
        state.params, finetune.change_rate_factors(state.params, grads)))
    after = jax.device_get(measure(calibrated))
    weights = finetune.conv_squared_norms(calibrated.params)
    rates = np.array([after[g] / weights[g] for g in weights])
    before = np.array([grads[g] / finetune.conv_squared_norms(state.params)[g]
                       for g in weights])
    assert before.max() / before.min() > 10
    np.testing.assert_allclose(rates, rates.mean(), rtol=1e-3)


def test_fine_tuning_learns_a_separable_folder(tmp_path):
    write_toy_folder(tmp_path / "toy", n_per_class=16)
    config = finetune_config(dataset=f"imagefolder:{tmp_path / 'toy'}", num_steps=40,
                             lr_decay_every=1000, log_every=10, save_every=40,
                             learning_rate=0.01, val_split="test")
    result = finetune.run(config, str(tmp_path / "out"))
    assert result["accuracy"] >= 0.9 and result["step"] == 40
    assert result["val_accuracy"] == result["accuracy"]      # val_split scored alike
    losses = [json.loads(line)["loss"] for line in
              (tmp_path / "out" / "metrics.jsonl").read_text().splitlines() if "loss" in line]
    assert losses[-1] < 0.5 * losses[0]
    saved = json.loads((tmp_path / "out" / "finetune.json").read_text())
    assert saved["accuracy"] == result["accuracy"] and saved["checkpoint"] == ""


def test_voc2007_multilabel_through_mock_data(tmp_path):
    config = finetune_config(dataset="tfds:voc/2007", train_split="train+validation",
                             test_split="test", num_steps=2, max_test_examples=6,
                             batch_size=4)
    with tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE):
        result = finetune.run(config, str(tmp_path))
        test = LabeledTfds(name="voc/2007", split="test", resolution=24)
        labels = np.stack([test[i]["label"] for i in range(6)])
    aps = result["per_class_ap"]
    assert list(aps) == list(test.class_names) and len(aps) == 20
    # A class has an AP exactly when one of the 6 test images shows it
    # (not only as "difficult"); mAP is their mean.
    scored = {name for name, ap in aps.items() if not np.isnan(ap)}
    assert scored == {test.class_names[c] for c in np.flatnonzero((labels == 1).any(0))}
    assert all(0.0 < aps[name] <= 1.0 for name in scored)
    assert result["map"] == pytest.approx(np.mean([aps[name] for name in scored]))
    assert result["test_examples"] == 6
    assert f"{100 * result['map']:.1f}" in (tmp_path / "finetune.md").read_text()


def test_interrupted_fine_tuning_of_a_checkpoint_resumes_exactly(tiny_run, tmp_path):
    """A real run SIGTERMed between two checkpoints saves and exits 143; the
    same command resumes it, and every logged loss and the test score equal
    an uninterrupted run's, one metrics row per step."""
    write_toy_folder(tmp_path / "toy", n_per_class=8)
    overrides = {"dataset": f"imagefolder:{tmp_path / 'toy'}", "max_test_examples": 4,
                 "checkpoint": str(tiny_run[0]), "image_size": 0, "num_steps": 40,
                 "save_every": 5, "log_every": 1}
    small = {"model.width": 0.125, "batch_size": 8, "num_threads": 2}
    args = command(tmp_path / "resumed", {**small, **overrides}, "mtssl.eval.finetune",
                   "configs/finetune.py:photos")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    log = tmp_path / "log.txt"
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "resumed" / "metrics.jsonl"
    wait_for_row(proc, metrics, lambda step: step >= 7)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 128 + signal.SIGTERM, log.read_text()[-3000:]
    stopped = int(log.read_text().split("stopped by SIGTERM; checkpoint ")[1].split()[0])
    assert 7 <= stopped < 40
    finished = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=600)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    resumed = json.loads((tmp_path / "resumed" / "finetune.json").read_text())
    straight = finetune.run(finetune_config(**overrides), str(tmp_path / "straight"))

    def losses(name):
        rows = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [(r["step"], r["loss"]) for r in map(json.loads, rows) if "loss" in r]
    assert [s for s, _ in losses("resumed")] == list(range(1, 41))
    assert losses("resumed") == losses("straight")
    assert resumed["accuracy"] == straight["accuracy"]
    saved = json.loads((tmp_path / "straight" / "finetune.json").read_text())
    assert saved["checkpoint"] == str(tiny_run[0]) and saved["checkpoint_step"] == 2


def test_unknown_dataset_names_the_choices(tmp_path):
    with pytest.raises(ValueError, match="imagefolder:<path>"):
        finetune.run(finetune_config(dataset="cifar"), str(tmp_path))
    with pytest.raises(ValueError, match="init_norm, change_rate, none"):
        finetune.run(finetune_config(rescale="krahenbuhl"), str(tmp_path))
    for field, value in (("save_every", 0), ("min_scale", 0.0), ("dropout", 1.0),
                         ("test_scale", 0.5)):
        with pytest.raises(ValueError, match=field):
            finetune.validate(finetune_config(**{field: value}))
    # On photos, a split scored for selection or test must be pixels the run
    # never trains on.
    finetune.validate(finetune_config(train_split="fit", val_split="val"))
    for train, field, scored in (("train", "val_split", "val"), ("train", "val_split", "fit"),
                                 ("fit", "test_split", "fit"), ("val", "val_split", "train")):
        with pytest.raises(ValueError, match=f"{field}='{scored}' shares pixels.*'fit' to "
                                             "score 'val'"):
            finetune.validate(finetune_config(train_split=train, **{field: scored}))
