"""`SyntheticFolder`: synthetic datasets already rendered to disk.

Layout (one file per frame and modality, matched by file stem):

    root/
      rgb/<frame>.png|jpg           colour image (required; or photo/, as
                                    SceneNet RGB-D names it)
      depth/<frame>.png|npy         uint16 PNG in millimetres (`depth_scale`
                                    changes the unit) or float32 .npy in
                                    metres; 0 / non-finite = invalid (required)
      normal/<frame>.png|npy        camera-frame unit normals; PNG encodes n as
                                    (n + 1) * 127.5 (optional: computed from
                                    depth + intrinsics if absent)
      instance/<frame>.png|npy      integer instance ids (8 or 16 bit PNG)
      contour/<frame>.png|npy       binary contour map; used when there are
                                    no instance maps (one of the two required)
      semantic/<frame>.png|npy      per-pixel class + 1 (0 = no class), the
                                    classes of `scenes.SEMANTIC_CLASSES`
                                    (optional: no class anywhere if absent)
      intrinsics.json               {"fx", "fy", "cx", "cy"} in pixels of the
                                    stored frames; or intrinsics/<frame>.json
                                    per frame. Pixel centres at integer + 0.5.

A root without rgb/ is a collection: every folder below it that has rgb/ or photo/
(one trajectory or scene each, SceneNet RGB-D style) is read in sorted order,
frames named "<sub-folder>/<frame>".

Conventions other datasets use are options, converted on read to the
project's (planar z-depth in metres, OpenCV camera axes: x right, y down, z
forward, normals facing the camera):
  depth_kind   "planar" (z-depth) | "ray" (distance along each pixel's ray:
               SceneNet RGB-D, Hypersim, Kubric, BlenderProc's `distance`);
  max_depth    > 0: depths at or beyond it are background (BlenderProc writes
               a large finite value there) and become invalid;
  normal_axes  "opencv" | "opengl" (x right, y up, z towards the viewer:
               Hypersim, BlenderProc).

Each record is the same dict as `SyntheticScenes` gives: frames are centre-
cropped to a square, resized to `resolution` (bilinear for rgb, nearest for
the maps), intrinsics are adjusted to match, and contours are recomputed from
the resized instance map with the renderer's definition.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import grain
import jax
import numpy as np
from PIL import Image

from mtssl.data import geometry, real, render
from mtssl.data.scenes import NO_CLASS

_IMAGE_EXTS = (".png", ".jpg", ".jpeg")
_MAP_EXTS = (".png", ".npy")
DEPTH_KINDS = ("planar", "ray")
NORMAL_AXES = ("opencv", "opengl")
# OpenGL camera axes -> OpenCV's: y and z flip.
_OPENGL_TO_OPENCV = np.array([1.0, -1.0, -1.0], np.float32)


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


def planar_from_ray(ray: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Distance along each pixel's ray -> planar z-depth: z = r / |(x', y', 1)|
    with (x', y') the pixel centre's normalised image coordinates under K."""
    h, w = ray.shape
    x = (np.arange(w) + 0.5 - k[0, 2]) / k[0, 0]
    y = (np.arange(h) + 0.5 - k[1, 2]) / k[1, 1]
    norm = np.sqrt(1.0 + x[None, :] ** 2 + y[:, None] ** 2)
    return (ray / norm).astype(np.float32)


def _read_k(path: pathlib.Path) -> np.ndarray:
    with open(path) as f:
        k = json.load(f)
    try:
        return np.array([[k["fx"], 0, k["cx"]], [0, k["fy"], k["cy"]], [0, 0, 1]],
                        np.float64)
    except KeyError as e:
        raise ValueError(f"{path}: missing key {e}; need fx, fy, cx, cy") from None


_COLOUR_FOLDERS = ("rgb", "photo")


def _colour_folder(root: pathlib.Path) -> str | None:
    return next((name for name in _COLOUR_FOLDERS if (root / name).is_dir()), None)


@dataclasses.dataclass
class _Sequence:
    """One folder in the layout above (a whole root, or one trajectory)."""

    root: pathlib.Path
    name: str

    def __post_init__(self):
        self.rgb = _index(self.root / _colour_folder(self.root), _IMAGE_EXTS)
        self.depth = _index(self.root / "depth", _MAP_EXTS)
        self.normal = _index(self.root / "normal", _MAP_EXTS)
        self.instance = _index(self.root / "instance", _MAP_EXTS)
        self.contour = _index(self.root / "contour", _MAP_EXTS)
        self.semantic = _index(self.root / "semantic", _MAP_EXTS)
        missing = [f for f in self.rgb if f not in self.depth]
        if missing:
            raise ValueError(f"{self.root}: {len(missing)} frame(s) have no depth "
                             f"map in depth/, e.g. {missing[0]!r}")
        no_shape = [f for f in self.rgb if f not in self.instance and f not in self.contour]
        if no_shape:
            raise ValueError(f"{self.root}: {len(no_shape)} frame(s) have neither "
                             f"instance/ nor contour/ maps, e.g. {no_shape[0]!r}")
        shared = self.root / "intrinsics.json"
        self.shared_k = _read_k(shared) if shared.exists() else None
        if self.shared_k is None and not (self.root / "intrinsics").is_dir():
            raise ValueError(f"{self.root}: need intrinsics.json or an intrinsics/ folder")

    def k(self, frame: str) -> np.ndarray:
        if self.shared_k is not None:
            return self.shared_k
        return _read_k(self.root / "intrinsics" / f"{frame}.json")


class SyntheticFolder(grain.sources.RandomAccessDataSource):
    """Random access to a synthetic dataset in the folder layout above.

    Args (keyword only):
      root: the dataset folder (or a folder of such folders).
      resolution: output square side in pixels.
      depth_scale: metres per unit of integer depth PNGs (0.001 = millimetres).
      depth_kind, max_depth, normal_axes: the conventions above.
    """

    def __init__(self, *, root: str | pathlib.Path, resolution: int = 128,
                 depth_scale: float = 0.001, depth_kind: str = "planar",
                 max_depth: float = 0.0, normal_axes: str = "opencv"):
        if depth_kind not in DEPTH_KINDS:
            raise ValueError(f"depth_kind={depth_kind!r}; valid: {', '.join(DEPTH_KINDS)}")
        if normal_axes not in NORMAL_AXES:
            raise ValueError(f"normal_axes={normal_axes!r}; valid: {', '.join(NORMAL_AXES)}")
        self.root = pathlib.Path(root)
        self.resolution = int(resolution)
        self.depth_scale = float(depth_scale)
        self.depth_kind, self.max_depth = depth_kind, float(max_depth)
        self.normal_axes = normal_axes
        self.skipped = real.SkippedRecords()
        if _colour_folder(self.root):
            sequences = [_Sequence(self.root, "")]
        else:
            roots = sorted({p.parent for name in _COLOUR_FOLDERS
                            for p in self.root.rglob(name) if p.is_dir()})
            sequences = [_Sequence(r, str(r.relative_to(self.root))) for r in roots]
        self._frames = [(seq, frame) for seq in sequences for frame in sorted(seq.rgb)]
        if not self._frames:
            raise ValueError(f"{self.root}: no frames in rgb/ or photo/ (expected *.png "
                             "or *.jpg), nor in any sub-folder's")

    @property
    def frames(self) -> list[str]:
        return [f"{seq.name}/{frame}" if seq.name else frame for seq, frame in self._frames]

    def __len__(self) -> int:
        return len(self._frames)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        """Frame `index`, or the next readable one (unreadable frames are
        skipped and counted in `skipped`)."""
        return real.read_or_skip(self._frame, int(index), len(self), self.skipped,
                                 lambda i: f"frame {self.frames[i]!r} of {self.root}")

    def _frame(self, index: int) -> dict[str, np.ndarray]:
        seq, frame = self._frames[index]
        rgb = real.to_rgb(real.read_image_file(seq.rgb[frame]))
        h, w = rgb.shape[:2]
        depth = _read_map(seq.depth[frame], (h, w)).astype(np.float32)
        if seq.depth[frame].suffix.lower() == ".png":
            depth = depth * self.depth_scale
        if self.max_depth > 0:
            depth = np.where(depth < self.max_depth, depth, 0.0)
        k = seq.k(frame)
        if self.depth_kind == "ray":
            depth = planar_from_ray(depth, k)

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
        if frame in seq.normal:
            n = _read_map(seq.normal[frame], (h, w))
            n = n.astype(np.float32) / 127.5 - 1.0 if n.dtype == np.uint8 else n
            n = np.nan_to_num(nearest(n[..., :3].astype(np.float32)),
                              nan=0.0, posinf=0.0, neginf=0.0)
            if self.normal_axes == "opengl":
                n = n * _OPENGL_TO_OPENCV
            n = n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-6)
        else:
            n = geometry.normals_from_depth(np.where(depth > 0, depth, np.nan), k_out)
            n = np.nan_to_num(n)
        if frame in seq.instance:
            instances = nearest(_read_map(seq.instance[frame], (h, w)).astype(np.int32))
            contours = np.asarray(render.instance_contours(jax.numpy.asarray(instances)))
        else:
            instances = np.zeros((self.resolution,) * 2, np.int32)
            c = _read_map(seq.contour[frame], (h, w)) > 0
            # Keep thin contours alive through downscaling: max over each cell.
            idx = np.floor(np.arange(side) * scale).astype(int)
            contours = np.zeros((self.resolution,) * 2, bool)
            np.logical_or.at(contours, (idx[:, None], idx[None, :]), c[crop])
        if frame in seq.semantic:
            semantics = nearest(_read_map(seq.semantic[frame], (h, w)).astype(np.int32)) - 1
        else:
            semantics = np.full((self.resolution,) * 2, NO_CLASS, np.int32)
        return {
            "image": image.astype(np.uint8),
            "depth": depth,
            "normals": n.astype(np.float32),
            "instances": instances,
            "contours": contours,
            "semantics": semantics,
            "intrinsics": k_out.astype(np.float32),
        }

    def __repr__(self) -> str:
        return (f"SyntheticFolder(root={str(self.root)!r}, frames={len(self)}, "
                f"resolution={self.resolution})")


def save_frame(root: str | pathlib.Path, frame: str, sample: dict[str, np.ndarray],
               depth_scale: float = 0.001) -> None:
    """Writes one sample in the folder layout above (the inverse of reading).

    Depth goes to a uint16 PNG in units of `depth_scale` metres, normals to an
    8-bit PNG, instances to a 16-bit PNG, semantic classes (if the sample has
    any labelled pixel) to an 8-bit PNG of class + 1, and the intrinsics to
    intrinsics/<frame>.json, so frames with different cameras can share a root.
    """
    root = pathlib.Path(root)
    for sub in ("rgb", "depth", "normal", "instance", "intrinsics"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    semantics = sample.get("semantics")
    if semantics is not None and np.any(np.asarray(semantics) != NO_CLASS):
        labels = np.asarray(semantics) + 1
        if labels.min() < 0 or labels.max() > 255:
            raise ValueError("semantic classes must be in [-1, 254] for an 8-bit PNG")
        (root / "semantic").mkdir(exist_ok=True)
        Image.fromarray(labels.astype(np.uint8)).save(root / "semantic" / f"{frame}.png")
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
