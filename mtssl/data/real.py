"""Real-image sources for the adversarial domain: grain RandomAccessDataSources
that yield {"image": uint8 (resolution, resolution, 3)}.

* `PackagePhotos`: random crops of the photographs shipped inside
  scikit-image: the embedded default, no download (a stand-in for Places365
  that lets everything run on a fresh machine). It crops only each photo's
  training part (`photo_part`): the rest is the embedded photos probe's test
  set, which pretraining must never see.
* `ImageFolder`: every image below a folder (jpg, png, bmp, webp, ...).
* `TfdsImages`: any TFDS dataset prepared as ArrayRecord, read through
  `tfds.data_source` without TensorFlow (e.g. `places365_small`,
  `imagenet2012`).

Geometry, shared by all three (`crop_and_resize`): `random_crop` takes a
random square of `min_scale`..1 of the shorter side and flips it half the
time, then resizes; `center_crop` takes the central square; `resize` squashes
the whole image to the square, as the reference did with Places365 ("resized
to 227"). Record i is a pure function of (seed, i).

Bad files never stop a run: a record that cannot be decoded (empty,
truncated, not an image, too large for PIL's decompression-bomb limit) is
skipped for the next readable one (i + 1, i + 2, ..., so still a pure
function of i) and counted in the source's `skipped` (`SkippedRecords`),
which training logs as data/skipped_*. Any mode PIL reads is accepted
(grayscale, 16-bit, CMYK, palette, alpha: `read_image_file`).
"""

from __future__ import annotations

import abc
import functools
import pathlib
import threading
from collections.abc import Callable, Sequence
from typing import Any

import grain
import numpy as np
from absl import logging
from PIL import Image

CROPS = ("random_crop", "center_crop", "resize")
# Photographs (not drawings or documents) in scikit-image's bundled data.
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon",
          "brick", "grass", "gravel", "immunohistochemistry", "hubble_deep_field")
# The left share of each photo in PHOTOS is its training part: the real
# domain and the photos probe's train crops come from it, the probe's test
# crops from the rest (`photo_part`). For model selection the training part
# splits again, by rows: "fit" (the top) and "val" (the bottom
# PHOTO_VAL_SHARE), so a run that trains on "fit" is scored on "val" pixels
# it never saw, as a test split would be.
PHOTO_TRAIN_SHARE = 0.55
PHOTO_VAL_SHARE = 0.4
PHOTO_PARTS = ("train", "test", "fit", "val")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


# What decoding a bad file raises (PIL's UnidentifiedImageError is an OSError).
READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
MAX_CONSECUTIVE_SKIPS = 64


class SkippedRecords:
    """Count of records a source could not read and skipped (thread-safe)."""

    def __init__(self):
        self.count, self.last = 0, ""
        self._lock = threading.Lock()

    def add(self, record: str, error: BaseException) -> None:
        with self._lock:
            self.count += 1
            self.last = f"{record}: {type(error).__name__}: {error}"
            if self.count <= 10 or self.count % 1000 == 0:
                logging.warning("skipped unreadable %s (%d skipped so far)", self.last,
                                self.count)

    def __getstate__(self):              # sources travel to grain workers by pickle
        return {"count": self.count, "last": self.last}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()


def read_or_skip(read: Callable[[int], Any], index: int, length: int,
                 skipped: SkippedRecords,
                 describe: Callable[[int], str] = lambda i: f"record {i}") -> Any:
    """read(index), or read() of the next readable record, counting the skips
    (logged as describe(i): the file, where a record is one)."""
    for k in range(MAX_CONSECUTIVE_SKIPS):
        i = (index + k) % length
        try:
            return read(i)
        except READ_ERRORS as e:
            skipped.add(describe(i), e)
    raise RuntimeError(f"{MAX_CONSECUTIVE_SKIPS} consecutive unreadable records from "
                       f"{index}; last: {skipped.last}")


def read_image_file(path: str | pathlib.Path) -> np.ndarray:
    """A whole image file decoded (truncated files raise), as an array
    `to_rgb` takes: 16-bit and float modes keep their range, CMYK, palette
    and other modes become RGB."""
    with Image.open(path) as im:
        im.load()
        if im.mode in ("L", "RGB", "RGBA", "LA") or im.mode.startswith(("I", "F")):
            return np.asarray(im)
        return np.asarray(im.convert("RGBA" if "A" in im.getbands() else "RGB"))


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Any 2-D/3-D image array -> uint8 RGB (gray is repeated, alpha dropped)."""
    a = np.asarray(image)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        a = a.astype(np.float64)
        hi = 65535.0 if a.max(initial=0) > 255 else (255.0 if a.max(initial=0) > 1 else 1.0)
        a = np.clip(np.round(a / hi * 255.0), 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return np.ascontiguousarray(a[..., :3])


def crop_box(shape: tuple[int, ...], mode: str, rng: np.random.Generator,
             min_scale: float = 0.35) -> tuple[tuple[int, int, int, int], bool]:
    """((left, top, right, bottom), flip) of `mode`'s crop of an (H, W) image."""
    if mode not in CROPS:
        raise ValueError(f"unknown crop mode {mode!r}; valid: {CROPS}")
    h, w = shape[:2]
    if mode == "resize":
        return (0, 0, w, h), False
    side = min(h, w)
    if mode == "random_crop":
        side = max(1, int(round(side * rng.uniform(min_scale, 1.0))))
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        flip = bool(rng.random() < 0.5)
    else:
        top, left, flip = (h - side) // 2, (w - side) // 2, False
    return (int(left), int(top), int(left) + side, int(top) + side), flip


def crop_and_resize(image: np.ndarray | Image.Image, resolution: int, mode: str,
                    rng: np.random.Generator, min_scale: float = 0.35) -> np.ndarray:
    """uint8 RGB (H, W, 3), or an RGB PIL image, -> (resolution, resolution, 3)
    by `mode` in CROPS."""
    if not isinstance(image, Image.Image):
        image = Image.fromarray(image)
    box, flip = crop_box((image.height, image.width), mode, rng, min_scale)
    out = image.resize((resolution, resolution), Image.BILINEAR, box=box)
    return flipped(np.asarray(out), flip)


def flipped(image: np.ndarray, flip: bool) -> np.ndarray:
    """`image` mirrored left-right when `flip`, as a contiguous array."""
    return np.ascontiguousarray(image[:, ::-1] if flip else image)


class CroppedImages(grain.sources.RandomAccessDataSource):
    """Shared __getitem__: load record -> to_rgb -> crop_and_resize."""

    def __init__(self, resolution: int, seed: int, crop: str, min_scale: float):
        if crop not in CROPS:
            raise ValueError(f"unknown crop mode {crop!r}; valid: {CROPS}")
        self.resolution, self.seed, self.crop = int(resolution), int(seed), crop
        self.min_scale = float(min_scale)
        self.skipped = SkippedRecords()

    @abc.abstractmethod
    def _load(self, index: int) -> np.ndarray | Image.Image:
        """Record `index` as an image array (any dtype, gray, RGB or RGBA) or
        an RGB PIL image."""

    def _record(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        image = self._load(index)
        if not isinstance(image, Image.Image):       # an RGB PIL image is used as it is
            image = to_rgb(image)
        return {"image": crop_and_resize(image, self.resolution, self.crop, rng,
                                         self.min_scale)}

    def describe(self, index: int) -> str:
        """How a skipped record is named in logs: its file, where it has one."""
        return f"record {index}"

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, int(index)])
        return read_or_skip(lambda i: self._record(i, rng), int(index), len(self),
                            self.skipped, self.describe)


@functools.cache
def package_photo(name: str) -> np.ndarray:
    import skimage.data  # imported lazily: only this source needs it
    return to_rgb(getattr(skimage.data, name)())


@functools.cache
def photo_part(name: str, part: str) -> np.ndarray:
    """Photo `name`'s training part ("train": its left PHOTO_TRAIN_SHARE of
    columns), the rest ("test"), or the training part's top rows ("fit") and
    bottom PHOTO_VAL_SHARE of rows ("val"); contiguous (PIL would copy a
    view)."""
    if part not in PHOTO_PARTS:
        raise ValueError(f"part must be one of {', '.join(PHOTO_PARTS)}, got {part!r}")
    photo = package_photo(name)
    cut = int(photo.shape[1] * PHOTO_TRAIN_SHARE)
    if part == "test":
        return np.ascontiguousarray(photo[:, cut:])
    train = photo[:, :cut]
    rows = train.shape[0] - int(train.shape[0] * PHOTO_VAL_SHARE)
    region = {"train": train, "fit": train[:rows], "val": train[rows:]}[part]
    return np.ascontiguousarray(region)


def photo_parts_overlap(a: str, b: str) -> bool:
    """Whether photo parts `a` and `b` share pixels ("train" holds "fit" and
    "val"; "test" holds none of them)."""
    return a == b or ("train" in (a, b) and "test" not in (a, b))


@functools.cache
def _photo_part_image(name: str, part: str) -> Image.Image:
    # Made once: converting a whole photo to PIL for each crop cost a third
    # as much as the crop itself.
    return Image.fromarray(photo_part(name, part))


class PackagePhotos(CroppedImages):
    """Random crops of the training parts of scikit-image's bundled
    photographs (keyword args only).

    `num_records` crops cycle through `photos`; with the default random crop
    and flip, every record is a different view. The photos' test parts are
    the photos probe's test images and are never read here: a pretrained
    encoder has seen no probe test pixel, not even unlabelled (its BatchNorm
    statistics and D see the real domain).
    """

    def __init__(self, *, resolution: int = 128, seed: int = 0,
                 num_records: int = 100_000, photos: Sequence[str] = PHOTOS,
                 crop: str = "random_crop", min_scale: float = 0.35):
        super().__init__(resolution, seed, crop, min_scale)
        unknown = [p for p in photos if p not in PHOTOS]
        if unknown or not photos:
            raise ValueError(f"photos must be a non-empty subset of {PHOTOS}, got {unknown}")
        self.photos, self.num_records = tuple(photos), int(num_records)

    def __len__(self) -> int:
        return self.num_records

    def _load(self, index: int) -> Image.Image:
        return _photo_part_image(self.photos[index % len(self.photos)], "train")

    def __repr__(self) -> str:
        return (f"PackagePhotos(resolution={self.resolution}, photos={len(self.photos)}, "
                f"num_records={self.num_records}, crop={self.crop!r})")


class ImageFolder(CroppedImages):
    """Every image file below `root` (recursive, sorted by path)."""

    def __init__(self, *, root: str | pathlib.Path, resolution: int = 128,
                 seed: int = 0, crop: str = "random_crop", min_scale: float = 0.35):
        super().__init__(resolution, seed, crop, min_scale)
        self.root = pathlib.Path(root)
        if not self.root.is_dir():
            raise ValueError(f"image folder {self.root} does not exist")
        self.files = sorted(p for p in self.root.rglob("*")
                            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not self.files:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) below {self.root}")

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, index: int) -> np.ndarray:
        return read_image_file(self.files[index])

    def describe(self, index: int) -> str:
        return str(self.files[index])

    def __repr__(self) -> str:
        return f"ImageFolder(root={str(self.root)!r}, images={len(self)})"


def open_tfds(name: str, split: str, data_dir: str | None):
    """`tfds.data_source` of a locally prepared dataset; never downloads
    (run `tfds build` first), and says so when the dataset is missing."""
    import tensorflow_datasets as tfds  # imported lazily: heavy
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # tfds raises several types for "not prepared"
        raise ValueError(
            f"TFDS dataset {name!r} (split {split!r}) is not available locally "
            f"({type(e).__name__}: {e}); prepare it first, e.g. "
            f"`tfds build {name} --file_format=array_record`") from e


class TfdsImages(CroppedImages):
    """The `image` feature of a TFDS dataset through `tfds.data_source`."""

    def __init__(self, *, name: str, split: str = "train", data_dir: str | None = None,
                 resolution: int = 128, seed: int = 0, crop: str = "random_crop",
                 min_scale: float = 0.35):
        super().__init__(resolution, seed, crop, min_scale)
        self.name, self.split = name, split
        self._source = open_tfds(name, split, data_dir)

    def __len__(self) -> int:
        return len(self._source)

    def _load(self, index: int) -> np.ndarray:
        return self._source[index]["image"]

    def __repr__(self) -> str:
        return f"TfdsImages(name={self.name!r}, split={self.split!r}, records={len(self)})"
