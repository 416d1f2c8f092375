"""Turning samples into pictures: colour maps and contact sheets (numpy only)."""

from __future__ import annotations

import numpy as np

# Turbo colour map, sampled at 9 points and interpolated linearly.
_TURBO = np.array([
    [0.19, 0.07, 0.23], [0.27, 0.38, 0.85], [0.16, 0.68, 0.93], [0.10, 0.90, 0.68],
    [0.48, 0.99, 0.33], [0.84, 0.90, 0.20], [0.99, 0.63, 0.15], [0.89, 0.27, 0.05],
    [0.48, 0.02, 0.01]])


def colorize(values: np.ndarray, lo: float | None = None,
             hi: float | None = None) -> np.ndarray:
    """Scalar map -> uint8 RGB with the turbo colour map (NaN -> black)."""
    v = np.asarray(values, np.float64)
    finite = np.isfinite(v)
    lo = np.nanmin(np.where(finite, v, np.nan)) if lo is None else lo
    hi = np.nanmax(np.where(finite, v, np.nan)) if hi is None else hi
    x = np.clip((np.where(finite, v, lo) - lo) / max(hi - lo, 1e-9), 0, 1)
    pos = x * (len(_TURBO) - 1)
    i = np.minimum(pos.astype(int), len(_TURBO) - 2)
    f = (pos - i)[..., None]
    rgb = _TURBO[i] * (1 - f) + _TURBO[i + 1] * f
    return np.where(finite[..., None], rgb * 255, 0).astype(np.uint8)


def depth_rgb(depth: np.ndarray) -> np.ndarray:
    """Depth map -> RGB; near is blue, far is red; log-scaled like the target."""
    d = np.where(np.asarray(depth) > 0, np.asarray(depth, np.float64), np.nan)
    return colorize(np.log(d))


def normals_rgb(normals: np.ndarray) -> np.ndarray:
    """Unit normals -> RGB as (n + 1) / 2 (the usual normal-map colours)."""
    return np.clip((np.asarray(normals) + 1.0) * 127.5, 0, 255).astype(np.uint8)


def mask_rgb(mask: np.ndarray) -> np.ndarray:
    return np.repeat((np.asarray(mask) > 0).astype(np.uint8)[..., None] * 255, 3, -1)


def sample_tiles(sample: dict[str, np.ndarray]) -> list[np.ndarray]:
    """image | depth | normals | contours, as RGB tiles."""
    return [np.asarray(sample["image"], np.uint8), depth_rgb(sample["depth"]),
            normals_rgb(sample["normals"]), mask_rgb(sample["contours"])]


def grid(rows: list[list[np.ndarray]], pad: int = 2) -> np.ndarray:
    """Lays equally sized RGB tiles out in rows, separated by white lines."""
    h, w = rows[0][0].shape[:2]
    ncol = max(len(r) for r in rows)
    out = np.full((len(rows) * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255,
                  np.uint8)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y:y + h, x:x + w] = tile
    return out


def contact_sheet(samples: list[dict[str, np.ndarray]], per_row: int = 2) -> np.ndarray:
    """Several samples, `per_row` per row, each as image|depth|normals|contours."""
    rows = []
    for i in range(0, len(samples), per_row):
        row = []
        for s in samples[i:i + per_row]:
            row += sample_tiles(s)
        rows.append(row)
    return grid(rows)
