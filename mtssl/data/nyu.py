"""NYU Depth v2 (TFDS `nyu_depth_v2`) as a dense-evaluation source.

Each record of the prepared TFDS dataset (480x640 RGB, depth in metres,
float16, holes filled) becomes what the synthetic sources yield, so the same
`DenseMetrics` evaluate both:

    {"image": uint8 (R, R, 3), "depth": float32 (R, R) metres, 0 = invalid,
     "normals": float32 (R, R, 3) unit camera-frame (OpenCV), "contours": False,
     "semantics": NO_CLASS}

Geometry: the central 480x480 square is cut (as the training crops are
square) and resized to R; depth by nearest neighbour so invalid pixels never
mix with valid ones; depth outside (0, MAX_DEPTH] is invalid. Normals are
computed from the full-resolution depth with the Kinect colour camera's
intrinsics (`mtssl.data.geometry.normals_from_depth`, central differences
over +-NORMAL_STEP pixels), then sampled like depth. They are noisier than the plane-fit normals of the
published NYU benchmarks, so absolute normal errors here are not comparable
with papers; differences between encoders are. There are no contour labels,
and no class labels in the scene engine's classes.
"""

from __future__ import annotations

import grain
import numpy as np
from PIL import Image

from mtssl.data import geometry, real
from mtssl.data.scenes import NO_CLASS

# Colour camera of the NYU Kinect (NYU toolbox, camera_params.m), pixels.
NYU_INTRINSICS = np.array([[518.8579, 0.0, 325.5824],
                           [0.0, 519.4696, 253.7362],
                           [0.0, 0.0, 1.0]])
MAX_DEPTH = 10.0
# TFDS stores depth as float16 (steps of 2 mm at 2-4 m), about the depth change
# between neighbouring pixels of a slanted wall: differences over +-4 px keep
# the quantisation error of the normals to a few degrees.
NORMAL_STEP = 4


def _resize_nearest(a: np.ndarray, size: int) -> np.ndarray:
    """(H, W) or (H, W, C) float array -> (size, size[, C]), nearest sample."""
    rows = ((np.arange(size) + 0.5) * a.shape[0] / size).astype(int)
    cols = ((np.arange(size) + 0.5) * a.shape[1] / size).astype(int)
    return a[rows][:, cols]


class NyuDepthV2(grain.sources.RandomAccessDataSource):
    """NYU Depth v2 through `tfds.data_source` (never downloads)."""

    def __init__(self, *, split: str = "validation", resolution: int = 96,
                 data_dir: str | None = None, name: str = "nyu_depth_v2"):
        self.resolution, self.split = int(resolution), split
        self._source = real.open_tfds(name, split, data_dir)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        record = self._source[int(index)]
        image = real.to_rgb(record["image"])
        depth = np.asarray(record["depth"], np.float32)
        depth = np.where((depth > 0) & (depth <= MAX_DEPTH), depth, 0.0)
        h, w = depth.shape
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        normals = geometry.normals_from_depth(depth, NYU_INTRINSICS, NORMAL_STEP)
        window = (slice(top, top + side), slice(left, left + side))
        r = self.resolution
        image = np.asarray(Image.fromarray(image[window]).resize((r, r), Image.BILINEAR))
        depth = _resize_nearest(depth[window], r)
        normals = _resize_nearest(normals[window], r)
        bad = ~np.isfinite(normals).all(-1)
        depth = np.where(bad, 0.0, depth).astype(np.float32)
        normals = np.where(bad[..., None], 0.0, normals).astype(np.float32)
        return {"image": image, "depth": depth, "normals": normals,
                "contours": np.zeros((r, r), bool),
                "semantics": np.full((r, r), NO_CLASS, np.int32)}
