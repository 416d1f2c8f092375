"""The scene engine: determinism, formats, and ground truth that is exact."""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtssl.data import SyntheticScenes, geometry, synthetic
from mtssl.data import render as rd
from mtssl.data import scenes as sc


def test_record_is_a_function_of_seed_and_index(source, batch):
    one = source[5]
    again = SyntheticScenes(resolution=source.resolution, seed=source.seed,
                            num_records=len(source))[5]
    for key in batch:
        # Alone, in a batch, from a fresh source: the same bits.
        np.testing.assert_array_equal(one[key], batch[key][5], err_msg=key)
        np.testing.assert_array_equal(one[key], again[key], err_msg=key)
    other_seed = SyntheticScenes(resolution=source.resolution, seed=source.seed + 1)
    assert not np.array_equal(other_seed[5]["image"], one["image"])
    assert not np.array_equal(batch["image"][4], batch["image"][5])


def test_len_and_index_wraparound(source):
    assert len(source) == 1000
    np.testing.assert_array_equal(source[1003]["depth"], source[3]["depth"])


def test_shapes_dtypes_ranges(batch):
    n, r = 12, 64
    assert batch["image"].shape == (n, r, r, 3) and batch["image"].dtype == np.uint8
    assert batch["depth"].shape == (n, r, r) and batch["depth"].dtype == np.float32
    assert batch["normals"].shape == (n, r, r, 3)
    assert batch["normals"].dtype == np.float32
    assert batch["instances"].shape == (n, r, r)
    assert batch["instances"].dtype == np.int32
    assert batch["contours"].shape == (n, r, r) and batch["contours"].dtype == bool
    assert batch["intrinsics"].shape == (n, 3, 3)
    # Rooms are at most 8 x 8 x 3.2 m: every depth is positive and bounded.
    assert np.all(batch["depth"] > 0)
    assert np.all(batch["depth"] < math.hypot(8, 8, 3.2))
    assert batch["instances"].min() >= 1
    assert batch["instances"].max() < sc.FIRST_OBJECT_INSTANCE + 8
    # Images are not blank: real contrast in every scene.
    assert np.all(batch["image"].reshape(12, -1).std(-1) > 5)


def test_scenes_contain_objects(batch):
    objects_per_scene = [
        len(np.unique(i[i >= sc.FIRST_OBJECT_INSTANCE])) for i in batch["instances"]]
    assert np.mean(objects_per_scene) >= 1.5, objects_per_scene
    # Floor and at least one wall are visible in almost every view.
    assert np.mean([np.any(i == 1) for i in batch["instances"]]) > 0.8


def test_semantic_classes_follow_the_instances_and_the_object_kinds(batch):
    """Every instance has one class: floor, ceiling, wall, or its object's kind."""
    assert batch["semantics"].dtype == np.int32
    # Jitted: eager sampling dispatches its hundreds of small ops one by one.
    sample = jax.jit(functools.partial(sc.sample_scene, cfg=sc.SceneConfig()))
    for i in range(4):
        kinds = np.asarray(sample(synthetic.record_keys(7, i)[0]).objects.kind)
        inst, sem = batch["instances"][i], batch["semantics"][i]
        want = {1: 0, 2: 1, 3: 2, 4: 2, 5: 2, 6: 2}
        want.update({sc.FIRST_OBJECT_INSTANCE + j: sc.FIRST_KIND_CLASS + int(k)
                     for j, k in enumerate(kinds)})
        np.testing.assert_array_equal(sem, np.vectorize(want.get)(inst))
    assert sc.SEMANTIC_CLASSES[:3] == ("floor", "ceiling", "wall")
    assert 0 <= batch["semantics"].min() and batch["semantics"].max() < len(sc.SEMANTIC_CLASSES)
    assert len(np.unique(batch["semantics"])) >= 5     # the room and several kinds


def test_normals_are_unit_and_face_the_camera(batch):
    n = batch["normals"]
    np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1.0, atol=1e-4)
    for k, normals in zip(batch["intrinsics"], n):
        rays = geometry.backproject(np.ones(normals.shape[:2]), k)
        assert np.all(np.sum(rays * normals, -1) < 1e-6)


def test_normals_agree_with_depth(batch):
    """Normals recomputed from depth + K match on smooth regions."""
    errors = []
    for depth, normals, inst, k in zip(batch["depth"], batch["normals"],
                                       batch["instances"], batch["intrinsics"]):
        from_depth = geometry.normals_from_depth(depth, k)
        # Smooth: the 3x3 neighbourhood is one instance with one normal.
        same = np.ones(depth.shape, bool)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                shifted_i = np.roll(inst, (dy, dx), (0, 1))
                shifted_n = np.roll(normals, (dy, dx), (0, 1))
                same &= (shifted_i == inst) & (
                    np.abs(shifted_n - normals).max(-1) < 0.05)
        same[[0, -1], :] = same[:, [0, -1]] = False
        errors.append(geometry.angular_error_deg(from_depth, normals)[same])
    errors = np.concatenate(errors)
    assert errors.size > 10_000
    assert np.mean(errors) < 2.0, np.mean(errors)
    assert np.percentile(errors, 95) < 5.0


def test_contours_are_exactly_the_instance_boundaries(batch):
    for inst, contours in zip(batch["instances"], batch["contours"]):
        padded = np.pad(inst, 1, mode="edge")
        neighbours = [padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2],
                      padded[1:-1, 2:]]
        on_boundary = np.any([nb != inst for nb in neighbours], axis=0)
        # Every contour pixel lies on a boundary, and every boundary pixel
        # (on either side) is marked: no texture edges, no gaps.
        np.testing.assert_array_equal(contours, on_boundary)
        assert contours.any()
        # Each object present has its outline marked.
        for obj in np.unique(inst[inst >= sc.FIRST_OBJECT_INSTANCE]):
            assert contours[inst == obj].any()


def test_intrinsics_match_the_field_of_view(batch):
    k = batch["intrinsics"]
    assert np.allclose(k[:, 0, 0], k[:, 1, 1])
    assert np.allclose(k[:, 0, 2], 32.0) and np.allclose(k[:, 1, 2], 32.0)
    hfov = np.degrees(2 * np.arctan(32.0 / k[:, 0, 0]))
    assert np.all((hfov >= 50 - 1e-3) & (hfov <= 80 + 1e-3))


@pytest.fixture(scope="module")
def empty_room():
    """A 4 x 5 x 3 m empty room; camera at (1, 1, 1.5) facing +x, level."""
    key = jax.random.key(0)
    scene = sc.sample_scene(key, sc.SceneConfig())
    camera = sc.make_camera([1.0, 1.0, 1.5], 0.0, 0.0, 0.0, math.radians(60))
    scene = scene._replace(room=jnp.array([4.0, 5.0, 3.0]), camera=camera,
                           objects=sc.no_objects(scene.objects.position.shape[0]))
    cfg = rd.RenderConfig(resolution=32, aa_samples=0, sensor_effects=False)
    out = jax.jit(rd.render, static_argnames="cfg")(scene, key, cfg=cfg)
    return jax.device_get(out)


def test_analytic_depth_in_an_empty_room(empty_room):
    depth, inst, k = empty_room["depth"], empty_room["instances"], empty_room["intrinsics"]
    f, c = k[0, 0], k[0, 2]
    np.testing.assert_allclose(f, 16 / math.tan(math.radians(30)), rtol=1e-6)
    v, u = np.meshgrid(np.arange(32) + 0.5, np.arange(32) + 0.5, indexing="ij")
    far_wall = inst == 4            # plane x = W, 3 m in front of the camera
    floor, ceiling = inst == 1, inst == 2
    right_wall = inst == 5          # plane y = 0; camera right is world -y
    assert far_wall[16, 16] and floor[31, 16] and ceiling[0, 16]
    assert right_wall[16, 31]
    np.testing.assert_allclose(depth[far_wall], 3.0, rtol=1e-5)
    np.testing.assert_allclose(depth[floor], 1.5 * f / (v[floor] - c), rtol=1e-5)
    np.testing.assert_allclose(depth[ceiling], 1.5 * f / (c - v[ceiling]), rtol=1e-5)
    np.testing.assert_allclose(depth[right_wall], 1.0 * f / (u[right_wall] - c),
                               rtol=1e-5)
    n = empty_room["normals"]
    np.testing.assert_allclose(n[far_wall], [[0, 0, -1]] * far_wall.sum(), atol=1e-6)
    np.testing.assert_allclose(n[floor], [[0, -1, 0]] * floor.sum(), atol=1e-6)
    np.testing.assert_allclose(n[ceiling], [[0, 1, 0]] * ceiling.sum(), atol=1e-6)


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="min_objects"):
        sc.SceneConfig(min_objects=5, max_objects=2)
    with pytest.raises(ValueError, match="max_lights"):
        sc.SceneConfig(max_lights=4)
    with pytest.raises(ValueError, match="aa_fraction"):
        rd.RenderConfig(aa_fraction=2.0)
    with pytest.raises(ValueError, match="num_records"):
        SyntheticScenes(num_records=0)
    with pytest.raises(TypeError):
        SyntheticScenes(64)  # keyword arguments only


def test_object_bounds_contain_every_visible_object_point(batch):
    """Culling relies on the per-object world boxes; they must hold the objects."""
    cfg = sc.SceneConfig()
    for i in range(12):
        scene = sc.sample_scene(synthetic.record_keys(7, i)[0], cfg)
        points_cam = geometry.backproject(batch["depth"][i], batch["intrinsics"][i])
        rot = np.asarray(scene.camera.rotation)
        points = points_cam @ rot.T + np.asarray(scene.camera.position)
        bounds = np.asarray(scene.objects.bounds)
        for j in range(cfg.max_objects):
            mask = batch["instances"][i] == sc.FIRST_OBJECT_INSTANCE + j
            if not mask.any():
                continue
            assert bool(scene.objects.active[j])
            p = points[mask]
            assert np.all(p >= bounds[j, 0] - 1e-3) and np.all(p <= bounds[j, 1] + 1e-3)


def test_culling_changes_no_pixel_of_geometry(source, batch):
    """Culled (the session's renderer) and brute-force (vmapped) renders agree."""
    culled = {k: v[:4] for k, v in batch.items()}
    brute = SyntheticScenes(resolution=source.resolution, seed=source.seed,
                            num_records=source.num_records,
                            cull=False).render_batch(range(4))
    np.testing.assert_array_equal(culled["instances"], brute["instances"])
    np.testing.assert_array_equal(culled["semantics"], brute["semantics"])
    np.testing.assert_array_equal(culled["contours"], brute["contours"])
    # Depth to float32 rounding (the two paths associate the ray maths
    # differently: 64 px renders differ by up to 1.4e-5 relative), and normals
    # to that rounding times a small curved part's curvature (1.6e-3, a tenth
    # of a degree, at two pixels of one curved object out of 16k).
    np.testing.assert_allclose(culled["depth"], brute["depth"], rtol=5e-5)
    np.testing.assert_allclose(culled["normals"], brute["normals"], atol=5e-3)
    assert np.mean(np.abs(culled["normals"] - brute["normals"]) > 1e-4) < 1e-3
    # Colours may differ by rounding at the last bit of float maths.
    assert np.mean(culled["image"] != brute["image"]) < 0.01


def test_render_cache_reads_back_the_rendered_bits(source, batch, tmp_path):
    cached = SyntheticScenes(resolution=source.resolution, seed=source.seed,
                             num_records=len(source), cache_dir=str(tmp_path))
    first = cached.render_batch([3, 5, 3])                  # all rendered, then stored
    files = sorted(tmp_path.rglob("*.npz"))
    assert [f.name for f in files] == ["3.npz", "5.npz"]
    files[0].write_bytes(b"half a file")                  # a writer that died
    again = cached.render_batch([5, 9, 3, 11])             # hits, misses, the broken one
    for key in batch:
        np.testing.assert_array_equal(first[key], batch[key][[3, 5, 3]], err_msg=key)
        np.testing.assert_array_equal(again[key], batch[key][[5, 9, 3, 11]], err_msg=key)
        assert again[key].dtype == batch[key].dtype
    assert len(list(tmp_path.rglob("*.npz"))) == 4
    other = SyntheticScenes(resolution=source.resolution, seed=source.seed + 1,
                            num_records=len(source), cache_dir=str(tmp_path))
    assert other._cache.root != cached._cache.root         # another config, another cache


def test_render_cache_on_the_vmapped_path_renders_whole_batches(tmp_path):
    """Without culling (the GPU/TPU path) a partly cached batch is rendered
    whole, one program for one batch size, and gives the same bits."""
    plain = SyntheticScenes(resolution=32, seed=3, num_records=100, cull=False,
                            aa_samples=0, shadows=False)
    cached = SyntheticScenes(resolution=32, seed=3, num_records=100, cull=False,
                             aa_samples=0, shadows=False, cache_dir=str(tmp_path))
    cached.render_batch([1, 2])
    got, want = cached.render_batch([2, 7]), plain.render_batch([2, 7])
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert len(list(tmp_path.rglob("*.npz"))) == 3


def test_ray_tiles_change_no_bit(source, batch):
    """The tile rays are traced by is a speed knob only: the session's renders
    (the CPU default, 48-pixel tiles) and 32-pixel tiles (the former fixed
    size) agree in every bit, the antialiasing budget's ties included
    (records 2, 7 of this seed pick other edge pixels if ties follow the
    ray order)."""
    assert source.render_config.tile == 48
    records = np.arange(8, dtype=np.uint32)
    tiles32 = jax.device_get(synthetic.render_indices(
        np.uint32(source.seed), records, scene_cfg=source.scene_config,
        render_cfg=dataclasses.replace(source.render_config, tile=32),
        count=np.int32(len(records))))
    for key in batch:
        np.testing.assert_array_equal(tiles32[key], batch[key][:8], err_msg=key)
    with pytest.raises(ValueError, match="tile must be >= 1"):
        rd.RenderConfig(tile=0)
