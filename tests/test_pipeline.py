"""The zipped training pipeline: normalisation, shared crops, determinism."""

import collections

import grain
import numpy as np
import pytest

from mtssl.data import pipeline, real


def test_normalize_by_hand():
    img = np.array([[[255, 0, 51]]], np.uint8)
    np.testing.assert_allclose(pipeline.normalize_images(img)[0, 0],
                               [1 - 0.485, 0 - 0.456, 0.2 - 0.406], atol=1e-6)
    gray = pipeline.normalize_images(img, channel=2)[0, 0]
    np.testing.assert_allclose(gray, [0.2 - 0.485, 0.2 - 0.456, 0.2 - 0.406], atol=1e-6)


def test_normalize_gives_the_device_tables_bits_at_every_level():
    levels = np.broadcast_to(np.arange(256, dtype=np.uint8)[:, None], (256, 3))
    out = pipeline.normalize_images(levels)
    np.testing.assert_array_equal(out.T.view(np.uint32),
                                  pipeline.NORMALIZED_LEVELS.view(np.uint32))


def test_synthetic_crop_is_shared_by_all_maps():
    n, h = 3, 10
    yy, xx = np.meshgrid(np.arange(h), np.arange(h), indexing="ij")
    coord = (yy * 100 + xx).astype(np.float32)
    batch = {"image": np.repeat(coord[None, ..., None], 3, -1).repeat(n, 0).astype(np.uint16),
             "depth": np.repeat(coord[None], n, 0),
             "normals": np.repeat(coord[None, ..., None], 3, -1).repeat(n, 0),
             "contours": np.repeat((coord % 2 == 0)[None], n, 0),
             "semantics": np.repeat(coord[None], n, 0).astype(np.int32)}
    out = pipeline.CropSynthetic(6).random_map(batch, np.random.default_rng(0))
    assert out["depth"].shape == (3, 6, 6)
    for i in range(n):
        np.testing.assert_array_equal(out["image"][i, ..., 0], out["depth"][i])
        np.testing.assert_array_equal(out["normals"][i, ..., 2], out["depth"][i])
        np.testing.assert_array_equal(out["contours"][i], out["depth"][i] % 2 == 0)
        np.testing.assert_array_equal(out["semantics"][i], out["depth"][i])
        # A contiguous window of the original.
        assert np.all(np.diff(out["depth"][i], axis=1) == 1)
    with pytest.raises(ValueError, match="larger than"):
        pipeline.CropSynthetic(12).random_map(batch, np.random.default_rng(0))


@pytest.fixture(scope="module")
def dataset(source):
    photos = real.PackagePhotos(resolution=48, num_records=64)
    return pipeline.make_train_dataset(source, photos, batch_size=4, image_size=48,
                                       seed=0, grayscale=True)


def test_elements_have_the_training_layout(dataset):
    el = dataset[0]
    syn, rl = el["synthetic"], el["real"]
    assert syn["image"].shape == (4, 48, 48, 3) and syn["image"].dtype == np.float32
    assert syn["depth"].shape == (4, 48, 48) and syn["normals"].shape == (4, 48, 48, 3)
    assert syn["contours"].dtype == bool
    assert rl["image"].shape == (4, 48, 48, 3)
    # Grayscale trick: after the mean, channels differ only by the mean.
    for x in (syn["image"], rl["image"]):
        g = x + pipeline.IMAGENET_MEAN
        np.testing.assert_allclose(g[..., 0], g[..., 1], atol=1e-6)
        assert -0.5 <= x.min() and x.max() <= 0.6


def test_dataset_is_deterministic_and_resumes(dataset):
    np.testing.assert_array_equal(dataset[5]["real"]["image"], dataset[5]["real"]["image"])
    assert not np.array_equal(dataset[5]["real"]["image"], dataset[6]["real"]["image"])
    it = iter(dataset.to_iter_dataset())
    next(it)
    state = it.get_state()
    expected = next(it)
    resumed = iter(dataset.to_iter_dataset())
    resumed.set_state(state)
    got = next(resumed)
    np.testing.assert_array_equal(got["synthetic"]["depth"], expected["synthetic"]["depth"])
    np.testing.assert_array_equal(got["real"]["image"], expected["real"]["image"])
    assert isinstance(dataset, grain.MapDataset)


def test_on_device_rendering_gives_the_host_pipelines_batches(source):
    """Same seeds -> bit-identical images (and maps) rendered inside jit."""
    import functools

    import jax

    from mtssl.data.pipeline import render_on_device
    render = jax.jit(functools.partial(render_on_device, source=source, image_size=56))
    for grayscale, i in ((True, 0), (False, 5)):
        kwargs = dict(batch_size=4, image_size=56, seed=3, grayscale=grayscale)
        host = pipeline.make_train_dataset(source, None, **kwargs)
        device = pipeline.make_train_dataset(source, None, on_device=True, **kwargs)
        expected = host[i]["synthetic"]
        got = jax.device_get(render(device[i]["synthetic"]))
        assert set(device[i]["synthetic"]) == {"index", "crop", "channel"}
        for key in ("image", "depth", "normals", "contours"):
            np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


def test_reused_records_come_back_with_their_renders_bits(source):
    """reuse=2: batch i = the fresh chunk i + REUSE_DELAY, then chunk i (seen
    REUSE_DELAY batches earlier); records kept in memory equal fresh renders,
    in any order of access (a resume starts with nothing kept)."""
    d = pipeline.REUSE_DELAY
    chunks = pipeline._shuffled_indices(len(source), 7).batch(3, drop_remainder=True)
    reused = pipeline._batches(source, 6, seed=7, reuse=2)
    for i in (d, 0, d + 1):                         # batch d shares chunk d with batch 0
        expected = source.render_batch(np.concatenate([chunks[i + d], chunks[i]]))
        got = reused[i]
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    uses = collections.Counter(int(j) for i in range(3 * d) for j in
                               pipeline._batches(source, 6, 7, on_device=True, reuse=2)[i]["index"])
    firsts = {int(j) for i in range(d, 2 * d) for j in chunks[i]}
    assert all(uses[j] == 2 for j in firsts)        # chunks d..2d-1: batches i - d and i
    with pytest.raises(ValueError, match="multiple of reuse=4"):
        pipeline._batches(source, 6, seed=7, reuse=4)
