"""Turning samples into pictures: colour maps, contact sheets and the
training loop's prediction grids (numpy only)."""

from __future__ import annotations

from typing import Any

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


# One fixed colour per semantic class (golden-ratio hues), so every picture
# colours a class alike.
_CLASS_COLOURS = np.array([
    colorize(np.array([(0.618034 * c) % 1.0]), 0.0, 1.0)[0] for c in range(256)], np.uint8)


def classes_rgb(labels: np.ndarray) -> np.ndarray:
    """Integer class map -> RGB, unlabelled (negative) pixels black."""
    labels = np.asarray(labels)
    return np.where((labels >= 0)[..., None], _CLASS_COLOURS[np.clip(labels, 0, 255)],
                    0).astype(np.uint8)


def sample_tiles(sample: dict[str, np.ndarray]) -> list[np.ndarray]:
    """image | depth | normals | contours | semantics (if it has them), as
    RGB tiles."""
    tiles = [np.asarray(sample["image"], np.uint8), depth_rgb(sample["depth"]),
             normals_rgb(sample["normals"]), mask_rgb(sample["contours"])]
    if "semantics" in sample:
        tiles.append(classes_rgb(sample["semantics"]))
    return tiles


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
    """Several samples, `per_row` per row, each as `sample_tiles`."""
    rows = []
    for i in range(0, len(samples), per_row):
        row = []
        for s in samples[i:i + per_row]:
            row += sample_tiles(s)
        rows.append(row)
    return grid(rows)


def _prediction_tiles(pred: dict[str, np.ndarray], i: int, truth=None) -> list[np.ndarray]:
    tiles = []
    if "depth" in pred:
        if truth is not None:
            valid = truth["depth"][i] > 0
            log_true = np.log(np.where(valid, truth["depth"][i], 1.0))
            lo, hi = log_true[valid].min(initial=0.0), log_true[valid].max(initial=1.0)
            tiles += [colorize(np.where(valid, log_true, np.nan), lo, hi),
                      colorize(pred["depth"][i], lo, hi)]
        else:
            tiles.append(colorize(pred["depth"][i]))
    if "normals" in pred:
        if truth is not None:
            tiles.append(normals_rgb(truth["normals"][i]))
        tiles.append(normals_rgb(pred["normals"][i]))
    if "contours" in pred:
        if truth is not None:
            tiles.append(mask_rgb(truth["contours"][i]))
        prob = 1.0 / (1.0 + np.exp(-pred["contours"][i]))
        tiles.append(np.repeat((prob[..., None] * 255).astype(np.uint8), 3, -1))
    if "semantics" in pred:
        if truth is not None:
            tiles.append(classes_rgb(truth["semantics"][i]))
        tiles.append(classes_rgb(np.argmax(pred["semantics"][i], -1)))
    return tiles


def prediction_grid(previews: dict[str, Any], preds: dict[str, Any]) -> np.ndarray:
    """Rows: synthetic input | true, predicted map of each task (depth,
    normals, contours, semantics); then real input | predicted maps."""
    rows = []
    syn = previews["synthetic"]
    for i in range(len(syn["image"])):
        rows.append([syn["image"][i]] + _prediction_tiles(preds["synthetic"], i, syn))
    if "real" in previews:
        for i in range(len(previews["real"]["image"])):
            rows.append([previews["real"]["image"][i]]
                        + _prediction_tiles(preds["real"], i))
    return grid(rows)
