"""Hostile files in image folders and on-disk datasets: skipped and counted,
never a crash, never a poisoned batch; odd but valid images are read."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from mtssl.data import real
from mtssl.data.labeled import LabeledFolder


def write_image(path, array, mode=None, fmt=None, **save):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path, format=fmt, **save)


def hostile_folder(root):
    """Good images of odd kinds plus every kind of bad file. Returns the
    names of the readable ones."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    write_image(root / "a_rgb.jpg", rgb)
    write_image(root / "b_gray.png", rgb[..., 0])
    write_image(root / "c_alpha.png", np.dstack([rgb, rgb[..., :1]]))
    Image.fromarray(rgb).convert("CMYK").save(root / "d_cmyk.jpg")
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(root / "e_16bit.png")
    Image.fromarray(rgb).convert("P").save(root / "f_palette.png")
    (root / "g_empty.jpg").write_bytes(b"")
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG")
    (root / "h_truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "i_text.png").write_text("not an image at all")
    os.symlink(root, root / "j_loop")                       # a directory symlink loop
    return {"a_rgb.jpg", "b_gray.png", "c_alpha.png", "d_cmyk.jpg", "e_16bit.png",
            "f_palette.png"}


def test_image_folder_skips_and_counts_bad_files(tmp_path):
    good = hostile_folder(tmp_path)
    source = real.ImageFolder(root=tmp_path, resolution=16, crop="center_crop")
    assert len(source) == 9                                  # the loop is not followed
    images = [source[i]["image"] for i in range(len(source))]
    assert all(im.shape == (16, 16, 3) and im.dtype == np.uint8 for im in images)
    # Bad records (6, 7, 8) are replaced by the next readable one (wrapping round).
    names = [p.name for p in source.files]
    bad = [i for i, n in enumerate(names) if n not in good]
    assert len(bad) == 3 and source.skipped.count == 3 + 2 + 1
    for i in bad:
        np.testing.assert_array_equal(images[i], images[0])
    assert source.skipped.last.startswith(str(tmp_path / "i_text.png"))
    # 16-bit keeps its range (not saturated to white); gray is replicated.
    e = source[names.index("e_16bit.png")]["image"]
    b = source[names.index("b_gray.png")]["image"]
    assert np.abs(e.astype(int) - b.astype(int)).max() <= 1 and e.std() > 10


def test_a_folder_of_nothing_readable_is_a_clear_error(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"")
    with pytest.raises(RuntimeError, match="consecutive unreadable"):
        real.ImageFolder(root=tmp_path, resolution=8)[0]


def test_labelled_folder_skips_bad_files_in_both_paths(tmp_path):
    hostile_folder(tmp_path / "cats")
    write_image(tmp_path / "dogs" / "ok.png", np.zeros((20, 20, 3), np.uint8))
    source = LabeledFolder(root=tmp_path, split="train", resolution=12, test_fraction=0.0)
    for i in range(len(source)):
        record = source[i]
        image, label = source.load_example(i)
        assert record["image"].shape == (12, 12, 3) and image.ndim == 3
        assert record["label"] == label
    assert source.skipped.count >= 6


def test_on_disk_synthetic_frames_with_bad_maps_are_cleaned_or_skipped(tmp_path, batch):
    from mtssl.data import on_disk

    frames = {f"f{i}": {k: v[i] for k, v in batch.items()} for i in range(6)}
    for name, frame in frames.items():
        on_disk.save_frame(tmp_path, name, frame)
    depth = frames["f0"]["depth"].astype(np.float32)
    holes = depth.copy()
    holes[:8], holes[8:16], holes[16:24] = np.nan, np.inf, 0.0
    for name, d in {"f0": holes, "f1": np.full_like(depth, np.nan),  # no valid pixel
                    "f2": depth[:32]}.items():                       # wrong size
        (tmp_path / "depth" / f"{name}.png").unlink()
        np.save(tmp_path / "depth" / f"{name}.npy", d)
    (tmp_path / "normal" / "f3.png").unlink()
    normals = frames["f3"]["normals"].copy()
    normals[:4] = np.nan
    np.save(tmp_path / "normal" / "f3.npy", normals)
    (tmp_path / "rgb" / "f4.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    np.save(tmp_path / "depth" / "f5.npy", np.array([object()]), allow_pickle=True)
    (tmp_path / "depth" / "f5.png").unlink()                          # a pickle: refused

    source = on_disk.SyntheticFolder(root=tmp_path, resolution=64)
    got = [source[i] for i in range(len(source))]
    for record in got:
        for key in ("depth", "normals", "intrinsics"):
            assert np.isfinite(record[key]).all(), key
    # NaN, inf and 0 depth are all "invalid" (0), the rest is kept.
    np.testing.assert_array_equal(got[0]["depth"][:24], 0.0)
    np.testing.assert_allclose(got[0]["depth"][24:], depth[24:])
    assert not got[1]["depth"].any()
    # Unreadable frames (wrong-size map, truncated image, pickled array) are
    # replaced by the next readable frame and counted (each read that hit one).
    assert source.skipped.count == 1 + 2 + 1
    np.testing.assert_array_equal(got[2]["image"], got[3]["image"])
    np.testing.assert_array_equal(got[4]["image"], got[0]["image"])   # wraps round
    np.testing.assert_array_equal(got[5]["image"], got[0]["image"])
    np.testing.assert_array_equal(got[3]["normals"][:4], 0.0)
    assert "frame 'f5'" in source.skipped.last
