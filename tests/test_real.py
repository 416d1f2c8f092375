"""Real-image sources: embedded photos, image folders, TFDS (mocked)."""

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from mtssl.data import labeled, real


def test_package_photos_are_deterministic_varied_crops():
    src = real.PackagePhotos(resolution=48, seed=3, num_records=50)
    assert len(src) == 50
    a, b = src[7]["image"], src[7]["image"]
    assert a.shape == (48, 48, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    # Two views of the same photo (7 and 7 + 12) differ; so do other seeds.
    assert not np.array_equal(a, src[7 + len(real.PHOTOS)]["image"])
    other = real.PackagePhotos(resolution=48, seed=4, num_records=50)
    assert not np.array_equal(a, other[7]["image"])
    assert a.std() > 5


def test_real_domain_never_reads_the_photos_probe_test_part(monkeypatch):
    # Every photo: its training part black, its test part white. No crop of
    # the real domain may contain a white pixel; the probe's test crops are
    # all white.
    def fake_photo(name):
        photo = np.zeros((60, 100, 3), np.uint8)
        photo[:, int(100 * real.PHOTO_TRAIN_SHARE):] = 255
        return photo

    monkeypatch.setattr(real, "package_photo", fake_photo)
    real.photo_part.cache_clear()
    real._photo_part_image.cache_clear()
    try:
        train, test = real.photo_part("coffee", "train"), real.photo_part("coffee", "test")
        np.testing.assert_array_equal(np.concatenate([train, test], 1), fake_photo(""))
        src = real.PackagePhotos(resolution=16, num_records=200, min_scale=1.0)
        assert max(src[i]["image"].max() for i in range(len(src))) == 0
        probe_test = labeled.PhotoCrops(split="test", num_records=24, resolution=16)
        assert min(probe_test[i]["image"].min() for i in range(24)) == 255
    finally:
        real.photo_part.cache_clear()
        real._photo_part_image.cache_clear()


def test_crop_modes_by_hand():
    img = np.zeros((40, 80, 3), np.uint8)
    img[:, 40:] = 255                      # right half white
    rng = np.random.default_rng(0)
    centre = real.crop_and_resize(img, 20, "center_crop", rng)
    # The central 40x40 square spans columns 20..60: half black, half white.
    assert centre[:, :8].max() == 0 and centre[:, 12:].min() == 255
    squashed = real.crop_and_resize(img, 20, "resize", rng)
    assert squashed[:, :8].max() == 0 and squashed[:, 12:].min() == 255
    with pytest.raises(ValueError, match="random_crop"):
        real.crop_and_resize(img, 20, "zoom", rng)


def test_to_rgb_handles_gray_alpha_bool_and_16_bit():
    assert real.to_rgb(np.zeros((4, 5), np.uint8)).shape == (4, 5, 3)
    assert real.to_rgb(np.zeros((4, 5, 4), np.uint8)).shape == (4, 5, 3)
    assert real.to_rgb(np.ones((2, 2), bool)).max() == 255
    assert real.to_rgb(np.full((2, 2), 65535, np.uint16)).max() == 255


def test_image_folder_reads_nested_mixed_images(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    Image.fromarray(np.full((30, 40, 3), 200, np.uint8)).save(tmp_path / "a" / "x.png")
    Image.fromarray(np.full((50, 20), 10, np.uint8)).save(tmp_path / "a" / "b" / "y.jpg")
    Image.fromarray(np.full((16, 16, 4), 90, np.uint8)).save(tmp_path / "z.png")
    (tmp_path / "notes.txt").write_text("not an image")
    src = real.ImageFolder(root=tmp_path, resolution=8, crop="center_crop")
    assert len(src) == 3
    values = sorted(int(src[i]["image"].mean()) for i in range(3))
    assert values[0] < 20 and 80 < values[1] < 100 and values[2] > 190
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        real.ImageFolder(root=tmp_path / "empty")
    with pytest.raises(ValueError, match="does not exist"):
        real.ImageFolder(root=tmp_path / "missing")


def test_tfds_source_through_mock_data():
    with tfds.testing.mock_data(num_examples=5, policy=tfds.testing.MockPolicy.USE_CODE):
        src = real.TfdsImages(name="cifar10", split="train", resolution=16)
        assert len(src) == 5
        image = src[2]["image"]
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8


def test_tfds_source_never_downloads_and_says_how_to_prepare(tmp_path):
    from mtssl.data import TfdsImages
    with pytest.raises(ValueError, match="tfds build places365_small"):
        TfdsImages(name="places365_small", data_dir=str(tmp_path))
