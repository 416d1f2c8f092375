"""`SyntheticFolder`: synthetic datasets already rendered to disk.

Layout (one file per frame and modality, matched by file stem):

    root/
      rgb/<frame>.png|jpg           colour image (required)
      depth/<frame>.png|npy         uint16 PNG in millimetres (SceneNet RGB-D
                                    style; `depth_scale` changes the unit) or
                                    float32 .npy in metres; 0 / non-finite =
                                    invalid (required)
      normal/<frame>.png|npy        camera-frame unit normals, OpenCV axes;
                                    PNG encodes n as (n + 1) * 127.5 (optional:
                                    computed from depth + intrinsics if absent)
      instance/<frame>.png|npy      integer instance ids (8 or 16 bit PNG)
      contour/<frame>.png|npy       binary contour map; used when there are
                                    no instance maps (one of the two required)
      intrinsics.json               {"fx", "fy", "cx", "cy"} in pixels of the
                                    stored frames; or intrinsics/<frame>.json
                                    per frame. Pixel centres at integer + 0.5.

Each record is the same dict as `SyntheticScenes` gives: frames are centre-
cropped to a square, resized to `resolution` (bilinear for rgb, nearest for
the maps), intrinsics are adjusted to match, and contours are recomputed from
the resized instance map with the renderer's definition.
"""

from __future__ import annotations

import json
import pathlib

import grain
import jax
import numpy as np
from PIL import Image

from mtssl.data import geometry, real, render

_IMAGE_EXTS = (".png", ".jpg", ".jpeg")
_MAP_EXTS = (".png", ".npy")


def _index(folder: pathlib.Path, exts) -> dict[str, pathlib.Path]:
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir())
            if p.suffix.lower() in exts and p.is_file()}


def _read_map(path: pathlib.Path, shape: tuple[int, int]) -> np.ndarray:
    """A per-pixel map; a map whose size differs from its frame's image is an
    unreadable record (ValueError), not a silently misaligned target."""
    if path.suffix.lower() == ".npy":
        array = np.load(path, allow_pickle=False)
    else:
        with Image.open(path) as im:
            array = np.asarray(im)
    if array.shape[:2] != shape:
        raise ValueError(f"{path}: map is {array.shape[:2]}, its image is {shape}")
    return array


class SyntheticFolder(grain.sources.RandomAccessDataSource):
    """Random access to a synthetic dataset in the folder layout above.

    Args (keyword only):
      root: the dataset folder.
      resolution: output square side in pixels.
      depth_scale: metres per unit of integer depth PNGs (0.001 = millimetres).
    """

    def __init__(self, *, root: str | pathlib.Path, resolution: int = 128,
                 depth_scale: float = 0.001):
        self.root = pathlib.Path(root)
        self.resolution = int(resolution)
        self.depth_scale = float(depth_scale)
        self.skipped = real.SkippedRecords()
        rgb = _index(self.root / "rgb", _IMAGE_EXTS)
        if not rgb:
            raise ValueError(f"{self.root}: no frames in rgb/ (expected *.png or *.jpg)")
        self._depth = _index(self.root / "depth", _MAP_EXTS)
        self._normal = _index(self.root / "normal", _MAP_EXTS)
        self._instance = _index(self.root / "instance", _MAP_EXTS)
        self._contour = _index(self.root / "contour", _MAP_EXTS)
        self._frames = sorted(rgb)
        self._rgb = rgb
        missing = [f for f in self._frames if f not in self._depth]
        if missing:
            raise ValueError(f"{self.root}: {len(missing)} frame(s) have no depth "
                             f"map in depth/, e.g. {missing[0]!r}")
        no_shape = [f for f in self._frames
                    if f not in self._instance and f not in self._contour]
        if no_shape:
            raise ValueError(f"{self.root}: {len(no_shape)} frame(s) have neither "
                             f"instance/ nor contour/ maps, e.g. {no_shape[0]!r}")
        shared = self.root / "intrinsics.json"
        self._shared_k = self._read_k(shared) if shared.exists() else None
        if self._shared_k is None and not (self.root / "intrinsics").is_dir():
            raise ValueError(f"{self.root}: need intrinsics.json or an intrinsics/ folder")

    @staticmethod
    def _read_k(path: pathlib.Path) -> np.ndarray:
        with open(path) as f:
            k = json.load(f)
        try:
            return np.array([[k["fx"], 0, k["cx"]], [0, k["fy"], k["cy"]], [0, 0, 1]],
                            np.float64)
        except KeyError as e:
            raise ValueError(f"{path}: missing key {e}; need fx, fy, cx, cy") from None

    @property
    def frames(self) -> list[str]:
        return list(self._frames)

    def __len__(self) -> int:
        return len(self._frames)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        """Frame `index`, or the next readable one (unreadable frames are
        skipped and counted in `skipped`)."""
        return real.read_or_skip(self._frame, int(index), len(self), self.skipped,
                                 lambda i: f"frame {self._frames[i]!r} of {self.root}")

    def _frame(self, index: int) -> dict[str, np.ndarray]:
        frame = self._frames[index]
        rgb = real.to_rgb(real.read_image_file(self._rgb[frame]))
        h, w = rgb.shape[:2]
        depth = _read_map(self._depth[frame], (h, w)).astype(np.float32)
        if self._depth[frame].suffix.lower() == ".png":
            depth = depth * self.depth_scale
        k = self._shared_k if self._shared_k is not None else self._read_k(
            self.root / "intrinsics" / f"{frame}.json")

        # Centre square crop, then resize: K follows the crop and the scale.
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        scale = self.resolution / side
        crop = (slice(top, top + side), slice(left, left + side))
        k_out = k.copy()
        k_out[0, 2] = (k[0, 2] - left) * scale
        k_out[1, 2] = (k[1, 2] - top) * scale
        k_out[0, 0] *= scale
        k_out[1, 1] *= scale

        def nearest(a):
            idx = ((np.arange(self.resolution) + 0.5) / scale).astype(int)
            return a[crop][idx][:, idx]

        image = np.asarray(Image.fromarray(rgb[crop]).resize(
            (self.resolution, self.resolution), Image.BILINEAR))
        depth = nearest(depth)
        depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float32)
        if frame in self._normal:
            n = _read_map(self._normal[frame], (h, w))
            n = n.astype(np.float32) / 127.5 - 1.0 if n.dtype == np.uint8 else n
            n = np.nan_to_num(nearest(n[..., :3].astype(np.float32)),
                              nan=0.0, posinf=0.0, neginf=0.0)
            n = n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-6)
        else:
            n = geometry.normals_from_depth(np.where(depth > 0, depth, np.nan), k_out)
            n = np.nan_to_num(n)
        if frame in self._instance:
            instances = nearest(_read_map(self._instance[frame], (h, w)).astype(np.int32))
            contours = np.asarray(render.instance_contours(jax.numpy.asarray(instances)))
        else:
            instances = np.zeros((self.resolution,) * 2, np.int32)
            c = _read_map(self._contour[frame], (h, w)) > 0
            # Keep thin contours alive through downscaling: max over each cell.
            idx = np.floor(np.arange(side) * scale).astype(int)
            contours = np.zeros((self.resolution,) * 2, bool)
            np.logical_or.at(contours, (idx[:, None], idx[None, :]), c[crop])
        return {
            "image": image.astype(np.uint8),
            "depth": depth,
            "normals": n.astype(np.float32),
            "instances": instances,
            "contours": contours,
            "intrinsics": k_out.astype(np.float32),
        }

    def __repr__(self) -> str:
        return (f"SyntheticFolder(root={str(self.root)!r}, frames={len(self)}, "
                f"resolution={self.resolution})")


def save_frame(root: str | pathlib.Path, frame: str, sample: dict[str, np.ndarray],
               depth_scale: float = 0.001) -> None:
    """Writes one sample in the folder layout above (the inverse of reading).

    Depth goes to a uint16 PNG in units of `depth_scale` metres, normals to an
    8-bit PNG, instances to a 16-bit PNG, and the intrinsics to
    intrinsics/<frame>.json, so frames with different cameras can share a root.
    """
    root = pathlib.Path(root)
    for sub in ("rgb", "depth", "normal", "instance", "intrinsics"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(sample["image"], np.uint8)).save(root / "rgb" / f"{frame}.png")
    depth = np.round(np.asarray(sample["depth"]) / depth_scale)
    Image.fromarray(np.clip(depth, 0, 65535).astype(np.uint16)).save(
        root / "depth" / f"{frame}.png")
    normals = np.round((np.asarray(sample["normals"]) + 1.0) * 127.5)
    Image.fromarray(np.clip(normals, 0, 255).astype(np.uint8)).save(
        root / "normal" / f"{frame}.png")
    inst = np.asarray(sample["instances"])
    if inst.min() < 0 or inst.max() > 65535:
        raise ValueError("instance ids must be in [0, 65535] for a 16-bit PNG")
    Image.fromarray(inst.astype(np.uint16)).save(root / "instance" / f"{frame}.png")
    k = np.asarray(sample["intrinsics"], np.float64)
    with open(root / "intrinsics" / f"{frame}.json", "w") as f:
        json.dump({"fx": k[0, 0], "fy": k[1, 1], "cx": k[0, 2], "cy": k[1, 2]}, f)
