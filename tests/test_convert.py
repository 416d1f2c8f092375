"""mtssl.data.convert: each converter on a tiny source dataset written in that
dataset's own format, holding an analytic scene, read back by SyntheticFolder.

The scene: a camera level 0.8 m above a floor, with a wall 5 m ahead turned
20 degrees about the vertical; in the formats that have background, the top
rows see nothing. Depth must come back
as the analytic planar z (to PNG millimetres), normals as the analytic OpenCV
normals (to 8-bit PNG), background as 0, instance ids as designed.
"""

import json
import sys

import numpy as np
import pytest
from PIL import Image

from mtssl.data import convert, geometry
from mtssl.data.on_disk import SyntheticFolder

H, W = 24, 32
CAMERA_HEIGHT, WALL_Z, WALL_TURN = 0.8, 5.0, np.radians(20.0)
SKY = 3                                        # top rows without geometry
CROP = (slice(None), slice(4, 28))             # SyntheticFolder's centre 24x24 square
FLOOR, WALL = 1, 2                             # instance ids of the truth; 0 = none


def _scene(k, sky: bool):
    """Truth for K: (planar z, ray length, OpenCV normals, ids), sky rows 0."""
    x = (np.arange(W) + 0.5 - k[0, 2]) / k[0, 0]
    y = (np.arange(H) + 0.5 - k[1, 2]) / k[1, 1]
    xx, yy = np.meshgrid(x, y)
    floor_z = np.where(yy > 0, CAMERA_HEIGHT / np.maximum(yy, 1e-9), np.inf)
    # The wall n . X = n . (0, 0, WALL_Z), turned about the vertical axis so its
    # normal has x and z parts (an axis flip then differs from facing the camera).
    wall_n = np.array([-np.sin(WALL_TURN), 0.0, -np.cos(WALL_TURN)])
    wall_z = wall_n[2] * WALL_Z / (wall_n[0] * xx + wall_n[2])
    on_floor = floor_z < wall_z
    z = np.where(on_floor, floor_z, wall_z)
    ray = z * np.sqrt(1 + xx**2 + yy**2)
    normals = np.where(on_floor[..., None], [0.0, -1.0, 0.0], wall_n)
    ids = np.where(on_floor, FLOOR, WALL)
    if sky:
        z[:SKY], ids[:SKY], normals[:SKY] = 0.0, 0, 0.0
    return z, ray, normals, ids


def _interior(ids):
    """Pixels whose 4-neighbours are of the same surface (depth-derived
    normals mix surfaces at their boundary)."""
    p = np.pad(ids, 1, mode="edge")
    same = ((p[1:-1, 1:-1] == p[:-2, 1:-1]) & (p[1:-1, 1:-1] == p[2:, 1:-1])
            & (p[1:-1, 1:-1] == p[1:-1, :-2]) & (p[1:-1, 1:-1] == p[1:-1, 2:]))
    return same & (ids > 0)


def _check(got, k, z, normals, ids, *, normal_tol_deg=1.0, normal_mask=None):
    z, normals, ids = z[CROP], normals[CROP], ids[CROP]
    valid = z > 0
    np.testing.assert_allclose(got["depth"], z, atol=1.001e-3)
    assert (got["depth"][~valid] == 0).all()
    mask = valid if normal_mask is None else valid & normal_mask[CROP]
    error = geometry.angular_error_deg(got["normals"][mask], normals[mask])
    assert error.max() < normal_tol_deg, error.max()
    np.testing.assert_array_equal(got["instances"], ids)
    k_crop = k.copy()
    k_crop[0, 2] -= 4
    np.testing.assert_allclose(got["intrinsics"], k_crop, rtol=1e-6)


def _garbage(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89HDF\r\n not really an hdf5 file, nor a jpeg")


def _write_h5(path, **datasets):
    h5py = pytest.importorskip("h5py")      # the HDF5 tests skip without it
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for key, value in datasets.items():
            f.create_dataset(key, data=value)


# ---- pure helpers ----------------------------------------------------------------

def test_intrinsics_from_fov_give_scenenet_and_hypersim_cameras():
    k = convert.intrinsics_from_fov(320, 240, 60, 45)
    np.testing.assert_allclose([k[0, 0], k[1, 1], k[0, 2], k[1, 2]],
                               [277.128, 289.706, 160, 120], atol=1e-3)
    k = convert.intrinsics_from_fov(1024, 768, 60)
    np.testing.assert_allclose([k[0, 0], k[1, 1], k[0, 2], k[1, 2]],
                               [886.810, 886.810, 512, 384], atol=1e-3)


def test_tonemap_maps_the_90th_percentile_of_valid_brightness_to_0_8():
    rgb = np.full((10, 10, 3), 0.3)
    rgb[0, :5] = 0.075                       # a quarter of the light on 5% of the pixels
    valid = np.ones((10, 10), bool)
    valid[9] = False
    rgb[9] = 1000.0                          # invalid pixels do not set the exposure...
    out = convert.tonemap_hypersim(rgb, valid)
    assert (out[1:9] == 204).all()           # 0.8 * 255
    assert (out[0, :5] == round(0.8 * 0.25 ** (1 / 2.2) * 255)).all()
    assert (out[9] == 255).all()             # ...and are clipped
    assert (convert.tonemap_hypersim(np.zeros((4, 4, 3)), np.ones((4, 4), bool)) == 0).all()
    nothing_valid = convert.tonemap_hypersim(np.full((4, 4, 3), 0.25), np.zeros((4, 4), bool))
    assert (nothing_valid == round(0.25 ** (1 / 2.2) * 255)).all()      # scale 1


def test_instance_ids_beyond_16_bits_are_renumbered_keeping_0_and_order():
    ids = np.array([[0, 70000, 5], [70000, -3, 0]])
    out = convert.fit_instance_ids(ids)
    np.testing.assert_array_equal(out, [[0, 3, 2], [3, 1, 0]])
    small = np.array([[0, 7], [65535, 1]])
    np.testing.assert_array_equal(convert.fit_instance_ids(small), small)


# ---- SceneNet RGB-D --------------------------------------------------------------

def test_scenenet_ray_millimetres_become_planar_depth_and_normals(tmp_path):
    src, dst = tmp_path / "scenenet", tmp_path / "out"
    traj = src / "train" / "0" / "7"
    for sub in ("photo", "depth", "instance"):
        (traj / sub).mkdir(parents=True)
    k = convert.intrinsics_from_fov(W, H, 60, 45)
    z, ray, normals, ids = _scene(k, sky=True)
    ray_mm = np.where(z > 0, np.round(ray * 1000), 0).astype(np.uint16)   # 0: no depth
    for name in ("0", "25"):
        Image.fromarray(np.full((H, W, 3), 120, np.uint8)).save(traj / "photo" / f"{name}.jpg")
        Image.fromarray(ray_mm).save(traj / "depth" / f"{name}.png")
        Image.fromarray(ids.astype(np.uint16)).save(traj / "instance" / f"{name}.png")
    _garbage(traj / "photo" / "50.jpg")

    report = convert.convert_scenenet(src, dst)
    assert (report.converted, report.skipped.count) == (2, 1)
    assert "50.jpg" in report.skipped.last
    folder = SyntheticFolder(root=dst, resolution=H)
    assert folder.frames == ["train/0/7/0", "train/0/7/25"]
    # Normals come from the millimetre depth: a looser bound, away from edges.
    _check(folder[1], k, z, normals, ids, normal_tol_deg=2.0, normal_mask=_interior(ids))


# ---- Hypersim --------------------------------------------------------------------

def _write_hypersim(scene_dir):
    k = convert.intrinsics_from_fov(W, H, 60)
    z, ray, normals, ids = _scene(k, sky=True)
    final = scene_dir / "images" / "scene_cam_00_final_hdf5"
    geometry_dir = scene_dir / "images" / "scene_cam_00_geometry_hdf5"
    colour = np.full((H, W, 3), 0.3, np.float16)
    colour[:SKY] = 50.0                                  # a bright window, no geometry
    depth_meters = np.where(z > 0, ray, np.nan).astype(np.float32)
    normal_cam = (normals * [1.0, -1.0, -1.0]).astype(np.float32)    # OpenGL axes
    normal_cam[:SKY] = np.nan
    normal_cam[SKY:8, :6] *= -1                          # inward normals (an artist's mesh)
    normal_cam[10, 10:14] = 0                            # and zero ones, as Hypersim has
    semantic_instance = (ids - 1).astype(np.int16)       # floor 0, wall 1, none -1
    render_entity_id = np.where(ids == 0, -1, ids * 7).astype(np.int32)
    for index in ("0000", "0001"):
        _write_h5(final / f"frame.{index}.color.hdf5", dataset=colour)
        for name, value in (("depth_meters", depth_meters), ("normal_cam", normal_cam),
                            ("semantic_instance", semantic_instance),
                            ("render_entity_id", render_entity_id)):
            _write_h5(geometry_dir / f"frame.{index}.{name}.hdf5", dataset=value)
    _garbage(final / "frame.0002.color.hdf5")
    return k, z, normals, ids


def test_hypersim_hdr_ray_depth_and_opengl_normals(tmp_path):
    src, dst = tmp_path / "hypersim", tmp_path / "out"
    k, z, normals, ids = _write_hypersim(src / "ai_001_001")

    report = convert.convert_hypersim(src, dst)
    assert (report.converted, report.skipped.count) == (2, 1)
    assert "frame.0002.color.hdf5" in report.skipped.last
    folder = SyntheticFolder(root=dst, resolution=H)
    assert folder.frames == ["ai_001_001/cam_00/0000", "ai_001_001/cam_00/0001"]
    got = folder[0]
    _check(got, k, z, normals, ids)          # ids: semantic_instance + 1, none -> 0
    valid = z[CROP] > 0
    assert (got["image"][valid] == 204).all() and (got["image"][~valid] == 255).all()

    by_entity = convert.convert_hypersim(src, tmp_path / "entity", instances="render_entity_id",
                                         max_frames=1)
    assert (by_entity.converted, by_entity.skipped.count) == (1, 0)
    got = SyntheticFolder(root=tmp_path / "entity", resolution=H)[0]
    np.testing.assert_array_equal(got["instances"], np.where(ids == 0, 0, ids * 7 + 1)[CROP])


# ---- BlenderProc -----------------------------------------------------------------

BP_K = convert.k_matrix(30.0, 30.0, 16.0, 12.0)        # this layout's convention
BP_CAM_K = [30.0, 0, 15.5, 0, 30.0, 11.5, 0, 0, 1]      # the same camera as BOP writes it


def _write_blenderproc(out, camera_pose: bool):
    z, ray, normals, ids = _scene(BP_K, sky=True)
    background = z == 0
    common = {"colors": np.full((H, W, 3), (90, 140, 200), np.uint8),
              "instance_segmaps": ids.astype(np.int32)}          # background 0
    if camera_pose:
        common["camera_pose"] = np.bytes_(json.dumps(
            {"cam_K": BP_CAM_K, "cam_R_w2c": list(np.eye(3).ravel()), "cam_t_w2c": [0, 0, 0]}))
    encoded = (normals * [1.0, -1.0, -1.0] + 1.0) / 2.0       # camera frame, OpenGL, [0, 1]
    encoded[background] = 0.5                                  # Blender's "no normal"
    _write_h5(out / "0.hdf5", depth=np.where(background, 1e10, z).astype(np.float32),
              normals=encoded.astype(np.float32), **common)
    # Ray length, and the all-0.5 normals of enable_normals_output() called before
    # the camera poses were added: normals are then taken from depth.
    _write_h5(out / "1.hdf5", distance=np.where(background, 1e10, ray).astype(np.float32),
              normals=np.full((H, W, 3), 0.5, np.float32), **common)
    _garbage(out / "2.hdf5")
    return z, normals, ids


def test_blenderproc_depth_distance_background_and_camera_normals(tmp_path):
    src, dst = tmp_path / "bproc", tmp_path / "out"
    z, normals, ids = _write_blenderproc(src, camera_pose=False)

    report = convert.convert_blenderproc(src, dst, k=BP_K)
    assert (report.converted, report.skipped.count) == (2, 1)
    folder = SyntheticFolder(root=dst, resolution=H)
    assert folder.frames == ["0", "1"]
    _check(folder[0], BP_K, z, normals, ids)
    _check(folder[1], BP_K, z, normals, ids, normal_mask=_interior(ids))


def test_blenderproc_command_line_reads_cam_k_from_the_frames(tmp_path, capsys):
    src, dst = tmp_path / "bproc", tmp_path / "out"
    z, normals, ids = _write_blenderproc(src, camera_pose=True)
    assert convert.main(["blenderproc", str(src), str(dst)]) == 0
    printed = capsys.readouterr().out
    assert "converted 2 frame(s)" in printed and "skipped 1" in printed
    assert f"--config.synthetic.source=folder:{dst}" in printed
    # BOP's cam_K has pixel centres at integers: cx 15.5 there is 16 here.
    _check(SyntheticFolder(root=dst, resolution=H)[0], BP_K, z, normals, ids)

    (src / "0.hdf5").unlink()
    _write_h5(src / "0.hdf5", colors=np.zeros((H, W, 3), np.uint8),
              depth=np.ones((H, W), np.float32), instance_segmaps=np.zeros((H, W), np.int32))
    assert convert.main(["blenderproc", str(src), str(tmp_path / "again")]) == 2
    assert "--fx --fy --cx --cy or --camera" in capsys.readouterr().err


def test_blenderproc_bop_scene_camera_file(tmp_path):
    src, dst = tmp_path / "bproc", tmp_path / "out"
    z, normals, ids = _write_blenderproc(src, camera_pose=False)
    camera = tmp_path / "scene_camera.json"
    camera.write_text(json.dumps({"0": {"cam_K": BP_CAM_K, "depth_scale": 1.0}}))
    report = convert.convert_blenderproc(src, dst, camera_file=camera)
    # Frame 1 has no entry in the file: skipped, as is the corrupt frame 2.
    assert (report.converted, report.skipped.count) == (1, 2)
    _check(SyntheticFolder(root=dst, resolution=H)[0], BP_K, z, normals, ids)


# ---- command line and dependencies -----------------------------------------------

def test_command_line_names_the_valid_choices(tmp_path, capsys):
    with pytest.raises(SystemExit):
        convert.main(["kubric", str(tmp_path), str(tmp_path / "out")])
    assert "choose from 'scenenet', 'hypersim', 'blenderproc'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        convert.main(["hypersim", str(tmp_path), str(tmp_path / "out"), "--instances=x"])
    assert "semantic_instance" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        convert.main(["hypersim", str(tmp_path), str(tmp_path / "out"), "--fx=100"])
    assert "all of --fx --fy --cx --cy" in capsys.readouterr().err
    assert convert.main(["scenenet", str(tmp_path), str(tmp_path / "out")]) == 2
    assert "no SceneNet trajectories" in capsys.readouterr().err


def test_missing_h5py_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "h5py", None)    # import h5py fails
    with pytest.raises(ImportError, match=r"pip install 'mtssl\[hdf5\]'"):
        convert.convert_hypersim(tmp_path, tmp_path / "out")
    assert convert.main(["blenderproc", str(tmp_path), str(tmp_path / "out"),
                         "--fx=1", "--fy=1", "--cx=1", "--cy=1"]) == 2
    assert "mtssl[hdf5]" in capsys.readouterr().err


# ---- training on what the converters wrote --------------------------------------

def test_converted_and_raw_scenenet_folders_train_through_the_config(tmp_path):
    """The three converted datasets, and SceneNet's own layout read in place with
    depth_kind=ray, each train through --config.synthetic.source=folder:..."""
    from helpers import tiny_config
    from mtssl import train
    from mtssl.data.sources import synthetic_source

    scenenet = tmp_path / "scenenet" / "train" / "0" / "7"
    for sub in ("photo", "depth", "instance"):
        (scenenet / sub).mkdir(parents=True)
    k = convert.intrinsics_from_fov(W, H, 60, 45)
    z, ray, normals, ids = _scene(k, sky=False)
    rng = np.random.default_rng(0)
    for name in ("0", "25", "50"):
        photo = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
        Image.fromarray(photo).save(scenenet / "photo" / f"{name}.jpg")
        Image.fromarray(np.round(ray * 1000).astype(np.uint16)).save(
            scenenet / "depth" / f"{name}.png")
        Image.fromarray(ids.astype(np.uint16)).save(scenenet / "instance" / f"{name}.png")
    convert.convert_scenenet(tmp_path / "scenenet", tmp_path / "scenenet_out")
    _write_hypersim(tmp_path / "hypersim" / "ai_001_001")
    convert.convert_hypersim(tmp_path / "hypersim", tmp_path / "hypersim_out")
    _write_blenderproc(tmp_path / "bproc", camera_pose=False)
    convert.convert_blenderproc(tmp_path / "bproc", tmp_path / "bproc_out", k=BP_K)
    (scenenet / "intrinsics.json").write_text(json.dumps(
        {"fx": k[0, 0], "fy": k[1, 1], "cx": k[0, 2], "cy": k[1, 2]}))

    # Every folder goes through the config's source and the training data
    # iterator; two of them (one converted, one read in place) train end to
    # end, as the others differ from those only in what the reader was given.
    datasets = {"scenenet_out": {}, "hypersim_out": {}, "bproc_out": {},
                "scenenet": {"synthetic.depth_kind": "ray"}}
    for name, options in datasets.items():
        config = tiny_config(**{"synthetic.source": f"folder:{tmp_path / name}",
                                "da.enabled": False, "log.images_every_steps": 0,
                                "eval.num_images": 4, **options})
        source = synthetic_source(config)
        if name == "scenenet":     # in place: the planar depth of the analytic scene
            rows = (np.arange(config.image_size) + 0.5) * H / config.image_size
            cols = (np.arange(config.image_size) + 0.5) * H / config.image_size + 4
            want = z[rows.astype(int)][:, cols.astype(int)]
            np.testing.assert_allclose(source[0]["depth"], want, atol=1.5e-3)
        batch = next(train.data_iterator(config, source, None))["synthetic"]
        assert batch["image"].shape == (config.batch_size, config.image_size,
                                        config.image_size, 3), name
        assert np.all(np.isfinite(batch["depth"])) and batch["depth"].max() > 0, name
        np.testing.assert_allclose(np.linalg.norm(batch["normals"], axis=-1), 1.0,
                                   atol=1e-3, err_msg=name)
        if name not in ("hypersim_out", "scenenet"):
            continue
        last = train.train_and_evaluate(config, str(tmp_path / f"run_{name}"))
        assert np.isfinite(last["g_loss"]) and last["eval/depth/abs_rel"] < 10, name
        assert 0 <= last["eval/normals/mean_deg"] <= 180, name
