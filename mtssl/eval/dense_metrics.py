"""Dense-task metrics: depth, normals, contours, semantics (numpy, accumulating).

`DenseMetrics(tasks)` accumulates over batches of predictions (the network's
outputs: log depth, unit normals, contour logits, class logits) and ground
truth (depth in metres with 0 = invalid, unit normals, boolean contours,
integer classes with `scenes.NO_CLASS` = unlabelled), then `result()`:

  depth     abs_rel   mean |d - d*| / d*
            rmse      sqrt(mean (d - d*)^2)            (metres)
            log_rmse  sqrt(mean (log d - log d*)^2)
            delta1..3 share of pixels with max(d/d*, d*/d) < 1.25^k
            With `median_scaling`, each image's prediction is first scaled by
            median(d*) / median(d) (the usual protocol for scale-free depth).
  normals   mean, median angular error (degrees); share within 11.25, 22.5, 30
  contours  precision, recall, F at the best fixed threshold over the whole
            set (ODS), a predicted contour pixel counting as correct when a
            true one lies within `tolerance` pixels (Chebyshev distance) and
            vice versa for recall; plus that threshold (as a probability).
  semantics miou      mean over classes of intersection / union of the
                      predicted (argmax) and true masks, over the whole set;
                      classes absent from both are left out
            pixel_accuracy  share of labelled pixels classed right

Depth and normal errors are means over all valid pixels of the set.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mtssl.data.geometry import angular_error_deg

THRESHOLDS = np.linspace(0.02, 0.98, 49)


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of (..., H, W) masks by a (2r+1)^2 square."""
    if radius <= 0:
        return mask.astype(bool)
    h, w = mask.shape[-2:]
    pad = [(0, 0)] * (mask.ndim - 2) + [(radius, radius), (radius, radius)]
    padded = np.pad(mask.astype(bool), pad)
    out = np.zeros(mask.shape, bool)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out |= padded[..., dy:dy + h, dx:dx + w]
    return out


class DenseMetrics:
    def __init__(self, tasks: Sequence[str], *, median_scaling: bool = False,
                 tolerance: int = 1, thresholds: np.ndarray = THRESHOLDS):
        self.tasks = tuple(tasks)
        self.median_scaling = median_scaling
        self.tolerance = int(tolerance)
        self.thresholds = np.asarray(thresholds)
        self._depth = np.zeros(7)        # n, abs_rel, sq, log_sq, d1, d2, d3
        self._angles: list[np.ndarray] = []
        t = len(self.thresholds)
        self._edges = {"pred_ok": np.zeros(t), "pred": np.zeros(t),
                       "true_ok": np.zeros(t), "true": 0.0}
        self._confusion: np.ndarray | None = None      # (true, predicted) counts

    def update(self, preds: dict[str, np.ndarray], truth: dict[str, np.ndarray]) -> None:
        valid = np.asarray(truth["depth"]) > 0
        if "depth" in self.tasks and "depth" in preds:
            self._update_depth(np.asarray(preds["depth"], np.float64),
                               np.asarray(truth["depth"], np.float64), valid)
        if "normals" in self.tasks and "normals" in preds:
            err = angular_error_deg(np.asarray(preds["normals"]),
                                    np.asarray(truth["normals"]))
            self._angles.append(err[valid].astype(np.float32))
        if "contours" in self.tasks and "contours" in preds:
            self._update_contours(np.asarray(preds["contours"], np.float64),
                                  np.asarray(truth["contours"], bool))
        if "semantics" in self.tasks and "semantics" in preds:
            self._update_semantics(np.asarray(preds["semantics"]),
                                   np.asarray(truth["semantics"], np.int64))

    def _update_semantics(self, logits, true):
        classes = logits.shape[-1]
        if self._confusion is None:
            self._confusion = np.zeros((classes, classes), np.int64)
        labelled = (true >= 0) & (true < classes)
        pairs = true[labelled] * classes + logits.argmax(-1)[labelled]
        self._confusion += np.bincount(pairs, minlength=classes * classes).reshape(
            classes, classes)

    def _update_depth(self, log_pred, true, valid):
        for p, t, v in zip(log_pred, true, valid):
            if not v.any():
                continue
            d, gt = np.exp(p[v]), t[v]
            if self.median_scaling:
                d = d * (np.median(gt) / np.median(d))
            ratio = np.maximum(d / gt, gt / d)
            self._depth += [len(gt), np.sum(np.abs(d - gt) / gt), np.sum((d - gt) ** 2),
                            np.sum((np.log(d) - np.log(gt)) ** 2),
                            np.sum(ratio < 1.25), np.sum(ratio < 1.25 ** 2),
                            np.sum(ratio < 1.25 ** 3)]

    def _update_contours(self, logits, true):
        prob = 1.0 / (1.0 + np.exp(-logits))
        near_true = dilate(true, self.tolerance)
        self._edges["true"] += true.sum()
        for i, t in enumerate(self.thresholds):
            pred = prob >= t
            self._edges["pred"][i] += pred.sum()
            self._edges["pred_ok"][i] += (pred & near_true).sum()
            self._edges["true_ok"][i] += (true & dilate(pred, self.tolerance)).sum()

    def result(self) -> dict[str, float]:
        out = {}
        n = self._depth[0]
        if "depth" in self.tasks and n:
            _, abs_rel, sq, log_sq, d1, d2, d3 = self._depth
            out.update({"depth/abs_rel": abs_rel / n, "depth/rmse": np.sqrt(sq / n),
                        "depth/log_rmse": np.sqrt(log_sq / n), "depth/delta1": d1 / n,
                        "depth/delta2": d2 / n, "depth/delta3": d3 / n})
        if "normals" in self.tasks and self._angles:
            a = np.concatenate(self._angles)
            out.update({"normals/mean_deg": float(a.mean()),
                        "normals/median_deg": float(np.median(a)),
                        "normals/within_11.25": float(np.mean(a < 11.25)),
                        "normals/within_22.5": float(np.mean(a < 22.5)),
                        "normals/within_30": float(np.mean(a < 30))})
        if "contours" in self.tasks and self._edges["true"]:
            e = self._edges
            precision = np.where(e["pred"] > 0, e["pred_ok"] / np.maximum(e["pred"], 1), 0.0)
            recall = e["true_ok"] / e["true"]
            f = np.where(precision + recall > 0,
                         2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
            best = int(np.argmax(f))
            out.update({"contours/precision": float(precision[best]),
                        "contours/recall": float(recall[best]),
                        "contours/f": float(f[best]),
                        "contours/threshold": float(self.thresholds[best])})
        if "semantics" in self.tasks and self._confusion is not None and self._confusion.sum():
            c = self._confusion
            hit = np.diag(c).astype(np.float64)
            union = c.sum(0) + c.sum(1) - hit
            out.update({"semantics/miou": float(np.mean(hit[union > 0] / union[union > 0])),
                        "semantics/pixel_accuracy": float(hit.sum() / c.sum())})
        return {k: float(v) for k, v in out.items()}
