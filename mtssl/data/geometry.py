"""Geometry helpers on numpy arrays: back-projection and normals from depth.

Camera convention everywhere in mtssl: OpenCV (x right, y down, z forward),
pixel centres at integer + 0.5, depth = planar z in metres.
"""

from __future__ import annotations

import numpy as np


def backproject(depth: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """(H, W) planar depth + 3x3 K -> (H, W, 3) camera-frame points."""
    h, w = depth.shape
    fx, fy, cx, cy = intrinsics[0, 0], intrinsics[1, 1], intrinsics[0, 2], intrinsics[1, 2]
    v, u = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    return np.stack([(u - cx) / fx * depth, (v - cy) / fy * depth, depth], -1)


def normals_from_depth(depth: np.ndarray, intrinsics: np.ndarray,
                       step: int = 1) -> np.ndarray:
    """Unit camera-frame normals from depth by central differences.

    The normal is the cross product of the horizontal and vertical tangents of
    the back-projected surface (differences over +-`step` pixels; a wider step
    averages out quantised depth), oriented towards the camera. Border pixels
    use one-sided differences. Non-finite or non-positive depth gives NaN.
    """
    depth = depth.astype(np.float64)
    bad = ~np.isfinite(depth) | (depth <= 0)
    pts = backproject(np.where(bad, np.nan, depth), intrinsics)
    if step == 1:
        du = np.gradient(pts, axis=1)
        dv = np.gradient(pts, axis=0)
    else:
        h, w = depth.shape
        cols, rows = np.arange(w), np.arange(h)
        du = (pts[:, np.minimum(cols + step, w - 1)] - pts[:, np.maximum(cols - step, 0)])
        dv = (pts[np.minimum(rows + step, h - 1)] - pts[np.maximum(rows - step, 0)])
    n = np.cross(du, dv)
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    n = n / np.where(norm > 0, norm, np.nan)
    # Face the camera: the normal points against the viewing ray.
    facing = np.sum(n * pts, axis=-1, keepdims=True) > 0
    n = np.where(facing, -n, n)
    return n.astype(np.float32)


def angular_error_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle in degrees between unit vectors along the last axis."""
    cos = np.clip(np.sum(a * b, axis=-1), -1.0, 1.0)
    return np.degrees(np.arccos(cos))
