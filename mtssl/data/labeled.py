"""Labelled image datasets for evaluation (linear probes, transfer).

Every source is a grain RandomAccessDataSource yielding
{"image": uint8 (R, R, 3), "label": int32 ()} for single-label sets or
{"image": ..., "label": float32 (num_classes,) multi-hot} when `multilabel`
(1 present, 0 absent, -1 = `IGNORE`: VOC classes present only
as "difficult" objects), and has `class_names`. Record i's crop is a fixed
function of (seed, i); `load_example(i)` gives the uncropped RGB image and
label instead (for "photos", whose examples are crops: the crop's region at
full resolution), for pipelines that draw a new augmentation every epoch
(fine-tuning). `make_labeled(spec, split, ...)` builds one from a
string:

  "photos"             the embedded default: which of scikit-image's 12
                       bundled photographs a crop comes from; train crops
                       are drawn from the left 55% of each photo, test crops
                       from the right 45%, so no test pixel is ever trained on;
                       for choosing hyperparameters without the test split,
                       "fit" crops come from the top 60% of the training
                       region and "val" crops from its bottom 40%: train on
                       "fit", score "val" (both lie inside "train")
  "digits"             scikit-learn's bundled handwritten digits (UCI optdigits
                       test set: 1,797 8x8 images of 10 classes, 0..16 grey
                       levels), upscaled; a fixed shuffle splits it in halves
  "imagefolder:<path>" one sub-folder per class; either <path>/train and
                       <path>/test (split = sub-folder) or one folder split
                       by a stable hash of each file name (`test_fraction`)
  "tfds:<name>"        any TFDS classification dataset prepared as
                       ArrayRecord (`label` feature), or VOC 2007
                       ("tfds:voc/2007") as 20-class multi-label (`labels`)
"""

from __future__ import annotations

import abc
import hashlib
import pathlib

import numpy as np

from mtssl.data import real

DATASETS = ("photos", "digits", "imagefolder:<path>", "tfds:<name>")


IGNORE = -1.0   # a multi-label entry that is neither present nor absent (VOC "difficult")

class _Labeled(real.CroppedImages):
    """Shared __getitem__: _load_example -> crop by (seed, index); unreadable
    records are skipped and counted (`real.read_or_skip`)."""

    @abc.abstractmethod
    def _load_example(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 RGB image at its own size, label) of record `index`."""

    def load_example(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 RGB image at its own size, label) of record `index`, or of
        the next readable one."""
        return real.read_or_skip(self._load_example, int(index), len(self), self.skipped,
                                 self.describe)

    def _load(self, index: int) -> np.ndarray:
        return self._load_example(index)[0]

    def _record(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        image, label = self._load_example(index)
        return {"image": real.crop_and_resize(image, self.resolution, self.crop, rng,
                                              self.min_scale), "label": label}


class PhotoCrops(_Labeled):
    """Crops of the package photographs labelled by photograph."""

    SPLITS = real.PHOTO_PARTS               # the index is the seed offset

    def __init__(self, *, split: str = "train", num_records: int = 1200,
                 resolution: int = 64, seed: int = 0, min_scale: float = 0.3):
        if split not in self.SPLITS:
            raise ValueError(f"split must be one of {', '.join(self.SPLITS)}, got {split!r}")
        super().__init__(resolution, seed + self.SPLITS.index(split), "random_crop",
                         min_scale)
        self.split, self.num_records = split, int(num_records)
        self.class_names = real.PHOTOS
        self.multilabel = False

    def __len__(self) -> int:
        return self.num_records

    def _load_example(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        label = int(index) % len(self.class_names)
        return real.photo_part(self.class_names[label], self.split), np.int32(label)

    def load_example(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Record `index`'s crop of its photograph half at full resolution
        (the region its probe image is resized from): this task's examples are
        crops, so fine-tuning trains and tests on as many distinct images as
        the probe (the halves themselves are only 12 per split)."""
        half, label = self._load_example(index)
        (left, top, right, bottom), flip = real.crop_box(
            half.shape, self.crop, np.random.default_rng([self.seed, int(index)]),
            self.min_scale)
        return real.flipped(half[top:bottom, left:right], flip), label


class Digits(_Labeled):
    """scikit-learn's handwritten digits: a second embedded real dataset whose
    labels (shapes drawn by hand) have nothing to do with the photos task's
    (which photograph, so colour and texture). Each 8x8 image is scaled to
    `resolution` with the crop's resize; grey levels are stretched to 0..255."""

    def __init__(self, *, split: str = "train", resolution: int = 64, seed: int = 0,
                 crop: str = "center_crop"):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        try:
            from sklearn.datasets import load_digits
        except ImportError as err:
            raise ImportError("dataset 'digits' needs scikit-learn "
                              "(pip install scikit-learn)") from err
        super().__init__(resolution, seed, crop, 1.0)
        digits = load_digits()
        # The split is fixed (not the probe's seed): every encoder is scored
        # on the same test images.
        order = np.random.default_rng(0).permutation(len(digits.target))
        half = len(order) // 2
        keep = order[:half] if split == "train" else order[half:]
        self.images = np.round(digits.images[keep] * (255.0 / 16.0)).astype(np.uint8)
        self.labels = digits.target[keep].astype(np.int32)
        self.class_names = tuple(str(d) for d in digits.target_names)
        self.multilabel = False

    def __len__(self) -> int:
        return len(self.labels)

    def _load_example(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return (np.repeat(self.images[int(index)][..., None], 3, axis=-1),
                self.labels[int(index)])


def _in_test_split(name: str, fraction: float) -> bool:
    digest = hashlib.sha1(name.encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 < fraction


class LabeledFolder(_Labeled):
    """root/<class>/<image> (or root/<split>/<class>/<image>)."""

    def __init__(self, *, root: str | pathlib.Path, split: str = "train",
                 resolution: int = 64, seed: int = 0, crop: str = "center_crop",
                 min_scale: float = 0.35, test_fraction: float = 0.2):
        super().__init__(resolution, seed, crop, min_scale)
        root = pathlib.Path(root)
        if not root.is_dir():
            raise ValueError(f"image folder {root} does not exist")
        presplit = (root / "train").is_dir() and (root / "test").is_dir()
        base = root / split if presplit else root
        if presplit and not base.is_dir():
            raise ValueError(f"{root} has no {split!r} sub-folder")
        self.class_names = tuple(sorted(p.name for p in base.iterdir() if p.is_dir()))
        if not self.class_names:
            raise ValueError(f"{base}: expected one sub-folder per class")
        self.files, labels = [], []
        for label, name in enumerate(self.class_names):
            for path in sorted((base / name).rglob("*")):
                if path.suffix.lower() not in real.IMAGE_EXTENSIONS or not path.is_file():
                    continue
                if not presplit and _in_test_split(
                        str(path.relative_to(base)), test_fraction) != (split == "test"):
                    continue
                self.files.append(path)
                labels.append(label)
        if not self.files:
            raise ValueError(f"{base}: no images for split {split!r}")
        self.labels = np.asarray(labels, np.int32)
        self.multilabel = False

    def __len__(self) -> int:
        return len(self.files)

    def _load_example(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return real.to_rgb(real.read_image_file(self.files[index])), self.labels[int(index)]

    def describe(self, index: int) -> str:
        return str(self.files[index])


class LabeledTfds(_Labeled):
    """A TFDS dataset through `tfds.data_source` (never downloads)."""

    def __init__(self, *, name: str, split: str = "train", data_dir: str | None = None,
                 resolution: int = 64, seed: int = 0, crop: str = "center_crop",
                 min_scale: float = 0.35):
        super().__init__(resolution, seed, crop, min_scale)
        self.name, self.split = name, split
        self._source = real.open_tfds(name, split, data_dir)
        features = self._source.dataset_info.features
        if "label" in features:
            self._key, self.multilabel = "label", False
            self.class_names = tuple(features["label"].names)
        elif "labels" in features:
            self._key, self.multilabel = "labels", True
            self.class_names = tuple(features["labels"].feature.names)
            # VOC: a class present only through "difficult" objects is ignored.
            self._certain = "labels_no_difficult" if "labels_no_difficult" in features else None
        else:
            raise ValueError(f"TFDS dataset {name!r} has no 'label' or 'labels' feature; "
                             f"features: {', '.join(features.keys())}")

    def __len__(self) -> int:
        return len(self._source)

    def _load_example(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        record = self._source[int(index)]
        image, label = real.to_rgb(record["image"]), record[self._key]
        if self.multilabel:
            hot = np.zeros(len(self.class_names), np.float32)
            if self._certain:
                hot[np.asarray(label, np.int64)] = IGNORE
                label = record[self._certain]
            hot[np.asarray(label, np.int64)] = 1.0
            return image, hot
        return image, np.int32(label)


def make_labeled(spec: str, split: str, *, resolution: int, seed: int = 0,
                 crop: str = "center_crop", data_dir: str | None = None,
                 test_fraction: float = 0.2, num_records: int = 1200):
    """A labelled source from a dataset string (see module docstring)."""
    kind, _, arg = spec.partition(":")
    if kind == "photos" and not arg:
        return PhotoCrops(split=split, num_records=num_records, resolution=resolution,
                          seed=seed)
    if kind == "digits" and not arg:
        return Digits(split=split, resolution=resolution, seed=seed, crop=crop)
    if kind == "imagefolder" and arg:
        return LabeledFolder(root=arg, split=split, resolution=resolution, seed=seed,
                             crop=crop, test_fraction=test_fraction)
    if kind == "tfds" and arg:
        return LabeledTfds(name=arg, split=split, data_dir=data_dir,
                           resolution=resolution, seed=seed, crop=crop)
    raise ValueError(f"dataset={spec!r} is not valid; choose one of: {', '.join(DATASETS)}")
