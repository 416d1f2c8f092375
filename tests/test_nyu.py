"""NYU Depth v2 as a dense-evaluation source (TFDS mock data and a known plane)."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mtssl.data.nyu import MAX_DEPTH, NYU_INTRINSICS, NyuDepthV2


@pytest.fixture
def nyu_mock():
    with tfds.testing.mock_data(num_examples=2, policy=tfds.testing.MockPolicy.USE_CODE):
        yield


def test_records_have_the_synthetic_layout(nyu_mock):
    source = NyuDepthV2(split="validation", resolution=40)
    assert len(source) == 2
    r = source[1]
    assert r["image"].shape == (40, 40, 3) and r["image"].dtype == np.uint8
    assert r["depth"].shape == (40, 40) and r["depth"].dtype == np.float32
    assert r["normals"].shape == (40, 40, 3) and not r["contours"].any()
    valid = r["depth"] > 0
    assert valid.any() and np.all(r["depth"] <= MAX_DEPTH)
    np.testing.assert_allclose(np.linalg.norm(r["normals"][valid], axis=-1), 1, atol=1e-5)
    assert np.all(r["normals"][~valid] == 0)


def test_a_tilted_plane_gives_its_normal_and_holes_stay_invalid(nyu_mock):
    source = NyuDepthV2(split="validation", resolution=48)
    # The plane z = 2 + 0.5 y in the camera frame, seen through the NYU camera.
    v, u = np.meshgrid(np.arange(480) + 0.5, np.arange(640) + 0.5, indexing="ij")
    fy, cy = NYU_INTRINSICS[1, 1], NYU_INTRINSICS[1, 2]
    depth = 2.0 / (1.0 - 0.5 * (v - cy) / fy)
    depth[:40, :] = 0.0                               # a hole: invalid, not a surface
    source._source = [{"image": np.zeros((480, 640, 3), np.uint8),
                       "depth": depth.astype(np.float16)}]
    r = source[0]
    n = np.array([0.0, 0.5, -1.0]) / np.linalg.norm([0.0, 0.5, -1.0])
    inner = r["normals"][6:-2, 2:-2][r["depth"][6:-2, 2:-2] > 0]
    # float16 depth quantises the tangents (with +-1 px differences: median 2.1,
    # max 8.6 degrees); with +-4 px about 0.6 and 2.3.
    err = np.degrees(np.arccos(np.clip(inner @ n, -1, 1)))
    assert np.median(err) < 1.5 and err.max() < 5.0
    mean = inner.mean(0) / np.linalg.norm(inner.mean(0))
    assert np.degrees(np.arccos(mean @ n)) < 0.5
    assert np.all(r["depth"][:3] == 0)                # top rows came from the hole
    # Nearest sampling: every valid depth is one of the source depths.
    centre = r["depth"][24, 24]
    assert np.isclose(depth.astype(np.float16).astype(np.float32), centre).any()


def test_missing_dataset_says_how_to_prepare_it(tmp_path):
    with pytest.raises(ValueError, match="tfds build nyu_depth_v2"):
        NyuDepthV2(split="validation", data_dir=str(tmp_path))
