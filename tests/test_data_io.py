"""On-disk synthetic datasets, the grain pipeline and the preview command."""

import json
import pathlib
import subprocess
import sys

import grain
import numpy as np
import pytest
from PIL import Image

from mtssl.config import load_config_file
from mtssl import preview
from mtssl.data import SyntheticScenes, batched_dataset, geometry, on_disk
from mtssl.data import scenes as sc
from mtssl.data.synthetic import from_config

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"


def _sample(batch, i):
    return {k: v[i] for k, v in batch.items()}


def test_folder_round_trip(tmp_path, batch):
    for i in range(3):
        on_disk.save_frame(tmp_path, f"frame{i:03d}", _sample(batch, i))
    ds = on_disk.SyntheticFolder(root=tmp_path, resolution=64)
    assert len(ds) == 3 and ds.frames == ["frame000", "frame001", "frame002"]
    for i in range(3):
        got, want = ds[i], _sample(batch, i)
        assert set(got) == set(want)
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_allclose(got["depth"], want["depth"], atol=0.6e-3)
        assert geometry.angular_error_deg(got["normals"], want["normals"]).max() < 1.0
        np.testing.assert_array_equal(got["instances"], want["instances"])
        np.testing.assert_array_equal(got["contours"], want["contours"])
        np.testing.assert_array_equal(got["semantics"], want["semantics"])
        np.testing.assert_allclose(got["intrinsics"], want["intrinsics"], rtol=1e-6)


def test_folder_crops_resizes_and_derives_missing_maps(tmp_path, batch):
    """A 64x96 frame without normal/ or instance/ maps, with shared K."""
    s = _sample(batch, 0)
    wide = {k: np.concatenate([v, v[:, :32]], axis=1) if k not in ("intrinsics",)
            else v for k, v in s.items()}
    on_disk.save_frame(tmp_path, "a", wide)
    k = s["intrinsics"]
    (tmp_path / "intrinsics" / "a.json").unlink()
    (tmp_path / "intrinsics").rmdir()
    with open(tmp_path / "intrinsics.json", "w") as f:
        json.dump({"fx": float(k[0, 0]), "fy": float(k[1, 1]), "cx": float(k[0, 2]),
                   "cy": float(k[1, 2])}, f)
    (tmp_path / "normal" / "a.png").unlink()
    contour_png = tmp_path / "contour" / "a.png"
    contour_png.parent.mkdir()
    Image.fromarray(wide["contours"].astype(np.uint8) * 255).save(contour_png)
    (tmp_path / "instance" / "a.png").unlink()

    got = on_disk.SyntheticFolder(root=tmp_path, resolution=32)[0]
    assert got["image"].shape == (32, 32, 3)
    # The centre 64x64 crop of the 64x96 frame starts at column 16.
    np.testing.assert_allclose(got["intrinsics"][0, 2], (k[0, 2] - 16) / 2, rtol=1e-6)
    np.testing.assert_allclose(got["intrinsics"][0, 0], k[0, 0] / 2, rtol=1e-6)
    # Normals derived from depth are unit vectors facing the camera.
    n = got["normals"][1:-1, 1:-1]
    np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1.0, atol=1e-4)
    # Downscaled contours keep thin lines (max-pooled), not dropped ones.
    assert got["contours"].sum() >= wide["contours"][:, 16:80].sum() / 4
    # Semantic classes are sampled like instances; without semantic/ no pixel has one.
    np.testing.assert_array_equal(got["semantics"], wide["semantics"][1::2, 17:80:2])
    (tmp_path / "semantic" / "a.png").unlink()
    assert np.all(on_disk.SyntheticFolder(root=tmp_path, resolution=32)[0]["semantics"]
                  == sc.NO_CLASS)


def test_folder_errors_name_what_is_missing(tmp_path, batch):
    with pytest.raises(ValueError, match="no frames in rgb"):
        on_disk.SyntheticFolder(root=tmp_path)
    on_disk.save_frame(tmp_path, "a", _sample(batch, 0))
    (tmp_path / "depth" / "a.png").unlink()
    with pytest.raises(ValueError, match="no depth"):
        on_disk.SyntheticFolder(root=tmp_path)


def test_batched_dataset_renders_whole_batches(source):
    ds = batched_dataset(source, batch_size=4)
    assert len(ds) == len(source) // 4
    first = ds[1]
    assert first["image"].shape == (4, 64, 64, 3)
    np.testing.assert_array_equal(first["depth"], source.render_batch([4, 5, 6, 7])["depth"])
    shuffled = batched_dataset(source, batch_size=4, shuffle_seed=0)
    assert not np.array_equal(shuffled[1]["image"], first["image"])


def test_grain_iterator_resumes_exactly(source):
    ds = batched_dataset(source, batch_size=4, shuffle_seed=1).to_iter_dataset()
    it = iter(ds)
    next(it)
    state = it.get_state()
    expected = next(it)
    it2 = iter(ds)
    it2.set_state(state)
    np.testing.assert_array_equal(next(it2)["image"], expected["image"])


def test_source_works_in_a_plain_grain_pipeline(source):
    ds = grain.MapDataset.source(source).slice(slice(0, 3))
    samples = list(ds)
    assert len(samples) == 3 and samples[2]["image"].shape == (64, 64, 3)


def preview_config(arg: str = "", **overrides):
    config = load_config_file(str(CONFIGS / "preview.py") + (f":{arg}" if arg else ""))
    for key, value in overrides.items():
        target, _, field = key.rpartition("__")
        (config[target] if target else config)[field] = value
    return config


def test_preview_writes_a_contact_sheet(tmp_path):
    path = preview.run(preview_config(num=3, scenes__resolution=64, scenes__seed=7),
                       str(tmp_path))
    with Image.open(path) as im:
        sheet = np.asarray(im)
    # Two rows (2 scenes per row), 10 tiles per row, 2 px white separators.
    assert sheet.shape == (2 + 2 * 66, 2 + 10 * 66, 3)
    assert sheet[2:66, 2:66].std() > 5


def test_preview_of_a_folder(tmp_path, batch):
    on_disk.save_frame(tmp_path / "data", "x", _sample(batch, 1))
    path = preview.run(preview_config(num=1, folder=str(tmp_path / "data"),
                                      scenes__resolution=64), str(tmp_path / "out"))
    assert path.exists()


def test_preview_rejects_bad_values_before_rendering(tmp_path):
    with pytest.raises(ValueError, match="num must be >= 1"):
        preview.run(preview_config(num=0), str(tmp_path))


def test_scene_config_file_builds_the_default_source():
    config = load_config_file(str(CONFIGS / "scenes.py")).to_dict()
    source = from_config(config)
    default = SyntheticScenes()
    assert source.scene_config == default.scene_config
    assert source.render_config == default.render_config
    assert from_config(load_config_file(str(CONFIGS / "scenes.py") + ":paper")
                       .to_dict()).resolution == 256


def test_config_typos_name_the_valid_keys():
    with pytest.raises(ValueError, match="unknown key.*'resolutoin'.*valid keys:.*resolution"):
        from_config({"resolutoin": 64})
    with pytest.raises(ValueError, match="scene config.*valid keys:.*max_objects"):
        from_config({"scene": {"max_object": 3}})
    with pytest.raises(ValueError, match="valid: 'paper', 'fast'"):
        load_config_file(str(CONFIGS / "scenes.py") + ":huge")


def test_preview_command_line_takes_a_scene_preset_and_overrides(tmp_path):
    """The command as the docs write it: --config with a configs/scenes.py
    preset, --config.x=y overrides, --workdir as the output folder."""
    result = subprocess.run(
        [sys.executable, "-m", "mtssl.preview", f"--config={CONFIGS / 'preview.py'}:fast",
         f"--workdir={tmp_path}", "--config.num=2", "--config.scenes.resolution=64",
         "--config.scenes.seed=7"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    with Image.open(tmp_path / "contact_sheet.png") as im:
        assert im.size == (2 + 10 * 66, 2 + 66)
    assert "wrote" in result.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "mtssl.preview", f"--config={CONFIGS / 'preview.py'}",
         f"--workdir={tmp_path}", "--config.scenes.resolutoin=64"],
        capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "resolution" in bad.stderr

def _analytic_frame(root, name, *, ray_depth: bool, opengl: bool, background=None):
    """A 64x48 frame of a known scene, camera level at 1.2 m above a floor with
    a wall 6 m ahead: returns (planar depth, OpenCV normals) of the truth and
    writes the frame with depth as ray length or z, normals in OpenGL or
    OpenCV axes, float .npy maps."""
    h, w, fx, cx, cy = 48, 64, 40.0, 32.0, 24.0
    x = (np.arange(w) + 0.5 - cx) / fx
    y = (np.arange(h) + 0.5 - cy) / fx
    xx, yy = np.meshgrid(x, y)
    floor_z = np.where(yy > 0, 1.2 / np.maximum(yy, 1e-9), np.inf)
    z = np.minimum(floor_z, 6.0)
    normals = np.where((floor_z < 6.0)[..., None], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0])
    stored = z * np.sqrt(1 + xx**2 + yy**2) if ray_depth else z
    if background is not None:            # top rows: nothing there, written as a far value
        stored[:4], z[:4] = background, 0.0
    root = pathlib.Path(root)
    for sub in ("rgb", "depth", "normal", "instance"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(root / "rgb" / f"{name}.png")
    np.save(root / "depth" / f"{name}.npy", stored.astype(np.float32))
    written = normals * ([1.0, -1.0, -1.0] if opengl else 1.0)
    np.save(root / "normal" / f"{name}.npy", written.astype(np.float32))
    np.save(root / "instance" / f"{name}.npy", (floor_z < 6.0).astype(np.int32))
    (root / "intrinsics.json").write_text(json.dumps({"fx": fx, "fy": fx, "cx": cx, "cy": cy}))
    return z.astype(np.float32), normals.astype(np.float32)


def test_ray_length_depth_and_opengl_normals_read_back_as_planar_and_opencv(tmp_path):
    z, normals = _analytic_frame(tmp_path, "f", ray_depth=True, opengl=True)
    got = on_disk.SyntheticFolder(root=tmp_path, resolution=48, depth_kind="ray",
                                  normal_axes="opengl")[0]
    crop = (slice(None), slice(8, 56))       # the centre 48x48 square of the 64x48 frame
    np.testing.assert_allclose(got["depth"], z[crop], rtol=2e-6)
    np.testing.assert_array_equal(got["normals"], normals[crop])
    # Read as planar, the same file is wrong by the ray's obliquity (up to 30% here).
    planar = on_disk.SyntheticFolder(root=tmp_path, resolution=48)[0]
    assert (planar["depth"] / z[crop]).max() > 1.25


def test_depth_derived_normals_follow_the_converted_depth(tmp_path):
    """Without a normal map the normals come from depth: only the converted
    (planar) depth gives the floor's true normal."""
    z, normals = _analytic_frame(tmp_path, "f", ray_depth=True, opengl=False)
    (tmp_path / "normal" / "f.npy").unlink()
    got = on_disk.SyntheticFolder(root=tmp_path, resolution=48, depth_kind="ray")[0]
    floor = (slice(34, 46), slice(2, 46))     # inside the floor (it meets the wall at row 31.5)
    error = geometry.angular_error_deg(got["normals"][floor], normals[:, 8:56][floor])
    assert error.max() < 0.5
    as_planar = on_disk.SyntheticFolder(root=tmp_path, resolution=48)[0]
    assert geometry.angular_error_deg(as_planar["normals"][floor],
                                      normals[:, 8:56][floor]).mean() > 5.0


def test_background_beyond_max_depth_is_invalid(tmp_path):
    z, _ = _analytic_frame(tmp_path, "f", ray_depth=False, opengl=False, background=1e10)
    got = on_disk.SyntheticFolder(root=tmp_path, resolution=48, max_depth=1000.0)[0]
    assert (got["depth"][:4] == 0).all()
    np.testing.assert_allclose(got["depth"][4:], z[4:, 8:56], rtol=1e-6)


def test_a_root_of_trajectories_reads_every_one_through_the_config(tmp_path):
    from mtssl.config import defaults
    from mtssl.data.sources import synthetic_source
    for seq in ("traj_b", "traj_a"):
        z, _ = _analytic_frame(tmp_path / seq, "0000", ray_depth=True, opengl=True)
    (tmp_path / "traj_b" / "rgb").rename(tmp_path / "traj_b" / "photo")   # SceneNet's name
    config = defaults()
    config.image_size = 48
    config.synthetic.source = f"folder:{tmp_path}"
    config.synthetic.depth_kind, config.synthetic.normal_axes = "ray", "opengl"
    source = synthetic_source(config)
    assert source.frames == ["traj_a/0000", "traj_b/0000"]
    np.testing.assert_allclose(source[1]["depth"], z[:, 8:56], rtol=2e-6)
    with pytest.raises(ValueError, match="depth_kind.*valid: planar, ray"):
        on_disk.SyntheticFolder(root=tmp_path, depth_kind="euclid")
