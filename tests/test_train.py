"""End to end: `python -m mtssl.main`, checkpoints, resume, NaN stop, outputs."""

import json
import os
import re
import shutil
import signal
import subprocess

import jax
import numpy as np
import pytest
from helpers import (
    ROOT,
    TINY,
    assert_bit_identical,
    command,
    probe_config,
    restored_state,
    tensorboard_events,
    tiny_config,
    wait_for_row,
    write_toy_folder,
)

from mtssl import checkpointing, train
from mtssl.config import load_config_file


def test_main_writes_checkpoint_metrics_events_and_images(tiny_run):
    workdir, stdout = tiny_run
    assert "step 2/2 (100%)" in stdout and "img/s" in stdout and "ETA" in stdout
    assert (workdir / "checkpoints" / "2" / "state").is_dir()
    (line,) = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert line["step"] == 2
    for k in ("loss/depth", "loss/normals", "loss/contours", "loss/adversarial",
              "d_loss", "d_accuracy", "images_per_s", "g_lr", "eval/depth/abs_rel",
              "eval/normals/mean_deg", "eval/contours/f"):
        assert np.isfinite(line[k]), k
    assert 0 < line["eval/normals/mean_deg"] < 180 and 0 <= line["eval/contours/f"] <= 1
    assert "eval at step 2: depth/abs_rel" in stdout
    (events,) = (workdir / "tensorboard").iterdir()
    logged = [e for e in tensorboard_events(events) if e["scalars"]]
    assert logged[0]["scalars"]["loss/depth"] == pytest.approx(line["loss/depth"])
    assert (workdir / "images" / "predictions_00000002.png").exists()
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["image_size"] == 64 and saved["model"]["width"] == 0.125


def test_resume_continues_exactly_and_a_nan_keeps_the_last_good_checkpoint(
        tiny_run, tmp_path):
    workdir = tmp_path / "resumed"
    shutil.copytree(tiny_run[0], workdir)
    # Resume the 2-step run to 4 steps; compare with 4 uninterrupted steps.
    train.train_and_evaluate(tiny_config(num_steps=4), str(workdir))
    train.train_and_evaluate(tiny_config(num_steps=4), str(tmp_path / "straight"))
    resumed = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    straight = [json.loads(x) for x in
                (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in resumed] == [x["step"] for x in straight] == [2, 4]
    for key in ("g_loss", "loss/depth", "d_loss"):
        assert resumed[1][key] == straight[1][key], key
    config = tiny_config(num_steps=4)
    assert_bit_identical(restored_state(workdir, config, 4),
                         restored_state(tmp_path / "straight", config, 4))
    assert (workdir / "images" / "predictions_00000004.png").exists()

    # A learning rate that blows the weights up: the run stops at the next
    # check and the step-4 checkpoint stays the newest, loadable one.
    with pytest.raises(FloatingPointError, match=r"non-finite .*g_loss.* up to 6.*step 4"):
        train.train_and_evaluate(tiny_config(num_steps=8, **{"optim.g_lr": 1e30}),
                                 str(workdir))
    with checkpointing.RunCheckpoints(workdir / "checkpoints") as ckpt:
        assert ckpt.latest_step() == 4
    state = restored_state(workdir, config, 4)
    assert int(state.step) == 4
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.g_params))


def test_trained_encoder_loads_from_any_checkpoint_path_and_probes(tiny_run, tmp_path):
    from mtssl.eval import linear_probe
    from mtssl.pretrained import load_encoder, load_predictor

    workdir, _ = tiny_run
    encoder = load_encoder(workdir)
    assert encoder.config.image_size == 64 and encoder.step is not None
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    feats = encoder.features(images)
    assert set(feats) == {"conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"}
    for path in (workdir / "checkpoints", workdir / "checkpoints" / str(encoder.step)):
        again = load_encoder(path).features(images)
        np.testing.assert_array_equal(again["conv5"], feats["conv5"])
    with pytest.raises(FileNotFoundError):
        load_encoder(tmp_path)
    maps = load_predictor(workdir)(images)
    assert set(maps) == {"depth", "normals", "contours"}
    assert maps["depth"].shape == maps["contours"].shape == (2, 64, 64)
    assert (maps["depth"] > 0).all() and ((maps["contours"] >= 0) & (maps["contours"] <= 1)).all()
    np.testing.assert_allclose(np.linalg.norm(maps["normals"], axis=-1), 1.0, atol=1e-4)

    write_toy_folder(tmp_path / "toy", n_per_class=10)
    config = probe_config(dataset=f"imagefolder:{tmp_path / 'toy'}",
                          checkpoint=str(workdir), image_size=0, epochs=2)
    results = linear_probe.run(config, str(tmp_path / "probe"))
    assert set(results) == {"conv1", "conv3", "conv5"}
    run_info = json.loads((tmp_path / "probe" / "probe_run.json").read_text())
    assert run_info["checkpoint_step"] == encoder.step and run_info["image_size"] == 64


def test_standalone_evaluation_matches_the_training_time_one(tiny_run, tmp_path):
    from mtssl.eval import dense
    workdir = tmp_path / "run"
    shutil.copytree(tiny_run[0], workdir)
    config = load_config_file(os.path.join(ROOT, "configs/dense.py"))
    config.num_images, config.step, config.batch_size = 6, 2, 4
    result = dense.run(config, str(workdir))              # what the command runs
    assert json.loads((workdir / "eval_2.json").read_text()) == result
    logged = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[0])
    assert result["step"] == 2
    for key in ("eval/depth/abs_rel", "eval/normals/mean_deg", "eval/contours/f"):
        assert result[key] == pytest.approx(logged[key], rel=1e-5), key


def test_nyu_depth_evaluation_of_a_checkpoint_through_mock_data(tiny_run):
    import tensorflow_datasets as tfds

    from mtssl.eval.dense import evaluate_checkpoint
    workdir, _ = tiny_run
    with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
        result = evaluate_checkpoint(str(workdir), num_images=3, step=2, batch_size=4,
                                     nyu=True)
    for key in ("eval_nyu/depth/abs_rel", "eval_nyu/depth/delta1", "eval_nyu/normals/mean_deg",
                "eval/contours/f"):
        assert np.isfinite(result[key]), key
    assert not any(k.startswith("eval_nyu/contours") for k in result)   # no labels


def test_procedural_target_domain_trains_and_is_evaluated(tmp_path):
    from mtssl.data.scenes import TARGET_APPEARANCE, SceneConfig
    from mtssl.data.sources import target_source

    # With the fourth task, semantics, trained, logged and evaluated too.
    config = tiny_config(**{"real.source": "target", "log.images_every_steps": 0,
                            "model.tasks": ("depth", "normals", "contours", "semantics")})
    target = target_source(config, held_out=False)
    assert target.resolution == config.image_size
    assert target.scene_config == SceneConfig(**{
        k: tuple(v) if isinstance(v, list) else v
        for k, v in {**config.synthetic.render.scene.to_dict(), **TARGET_APPEARANCE}.items()})
    # The same scenes as the training appearance gives for the target's seed
    # (geometry and labels identical), every surface textured with photo tiles.
    from mtssl.data import SyntheticScenes
    from mtssl.data.render import photo_atlas
    twin = SyntheticScenes(resolution=target.resolution, seed=target.seed,
                           num_records=len(target),
                           scene=SceneConfig(**config.synthetic.render.scene.to_dict()))
    target_batch, twin_batch = (s.render_batch(np.arange(4)) for s in (target, twin))
    for key in ("depth", "normals", "instances", "contours", "semantics"):
        np.testing.assert_array_equal(target_batch[key], twin_batch[key], err_msg=key)
    assert np.mean(np.abs(target_batch["image"].astype(np.float32)
                          - twin_batch["image"])) > 20
    atlas = photo_atlas()
    assert atlas.shape[0] >= 32 and atlas.std() > 0.1     # distinct photo tiles

    last = train.train_and_evaluate(config, str(tmp_path))
    # The target set is evaluated on its own held-out renders: its scores
    # are not the training domain's, and re-evaluating the checkpoint on
    # target scenes rendered anew gives the logged ones.
    from mtssl.eval.dense import evaluate_checkpoint
    again = evaluate_checkpoint(str(tmp_path), num_images=config.eval.num_images,
                                batch_size=config.batch_size)
    assert np.isfinite(last["loss/semantics"])
    assert 0 < last["eval/semantics/miou"] < 1 and 0 < last["eval/semantics/pixel_accuracy"] < 1
    for metric in ("depth/abs_rel", "normals/mean_deg", "contours/f", "semantics/miou"):
        assert last[f"eval_target/{metric}"] != last[f"eval/{metric}"], metric
        for prefix in ("eval", "eval_target"):
            key = f"{prefix}/{metric}"
            assert again[key] == pytest.approx(last[key], rel=1e-5), key
    with pytest.raises(ValueError, match="textures must be a non-empty subset"):
        SceneConfig(textures=("marble",))


def test_killed_and_preempted_run_resumes_bit_identically(tmp_path):
    """SIGKILL at an arbitrary step, then SIGTERM (preemption) of the resumed
    run, then the same command to the end: every logged loss and, on CPU,
    every parameter and optimizer bit equal an uninterrupted run's."""
    total = 30
    overrides = {**TINY, "num_steps": total, "log.every_steps": 1, "eval.every_steps": 0,
                 "log.images_every_steps": 0, "checkpoint.every_steps": 5}
    args = command(tmp_path, overrides)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    metrics = tmp_path / "metrics.jsonl"

    log = tmp_path / "log.txt"

    def start():                                 # a file, not a pipe nobody drains
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=log.open("w"),
                                stderr=subprocess.STDOUT, text=True)

    proc = start()
    def past_a_saved_checkpoint(step):       # saves are asynchronous
        saved = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
        return step % 5 and any(s < step - 1 for s in saved)

    killed_at = wait_for_row(proc, metrics, past_a_saved_checkpoint)
    proc.kill()                                  # no handler, no final save
    assert proc.wait(timeout=60) == -signal.SIGKILL, log.read_text()[-3000:]
    with checkpointing.RunCheckpoints(tmp_path / "checkpoints") as ckpt:
        saved = ckpt.latest_step()
    assert saved is not None and saved % 5 == 0 and 5 <= saved < total

    proc = start()                               # the same command
    wait_for_row(proc, metrics, lambda step: step >= killed_at + 3)
    proc.send_signal(signal.SIGTERM)             # as a scheduler preempting the job
    proc.wait(timeout=300)
    out = log.read_text()
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert f"Resumed from step {saved}" in out
    preempted = int(re.search(r"stopped by SIGTERM; checkpoint (\d+) saved", out)[1])
    assert killed_at + 3 <= preempted < total

    finished = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert f"Resumed from step {preempted}" in finished.stdout

    config = tiny_config(**overrides)
    train.train_and_evaluate(config, str(tmp_path / "straight"))
    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    straight = [json.loads(x) for x in
                (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [r["step"] for r in straight] == list(
        range(1, total + 1))
    for r, q in zip(rows, straight):
        assert (r["g_loss"], r["d_loss"]) == (q["g_loss"], q["d_loss"]), r["step"]
    assert_bit_identical(restored_state(tmp_path, config, total),
                         restored_state(tmp_path / "straight", config, total))


def test_on_device_rendering_trains_like_the_host_pipeline(tiny_run, tmp_path):
    workdir, _ = tiny_run
    host = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[0])
    last = train.train_and_evaluate(
        tiny_config(**{"synthetic.on_device": True, "log.images_every_steps": 0,
                       "eval.every_steps": 0}), str(tmp_path))
    assert host["step"] == 2
    for key in ("g_loss", "loss/depth", "loss/normals", "loss/contours", "d_loss"):
        assert last[key] == pytest.approx(host[key], rel=1e-5), key
    with pytest.raises(ValueError, match="synthetic.source='render'"):
        train.train_and_evaluate(tiny_config(**{"synthetic.on_device": True,
                                                "synthetic.source": "folder:/x"}),
                                 str(tmp_path / "bad"))
