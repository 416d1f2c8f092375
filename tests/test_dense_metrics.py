"""Dense metrics against values computed by hand."""

import numpy as np
import pytest

from mtssl.eval.dense_metrics import DenseMetrics, dilate


def test_depth_metrics_by_hand():
    true = np.array([[[2.0, 4.0], [0.0, 1.0]]])          # one invalid pixel
    pred = np.log(np.array([[[1.0, 4.0], [5.0, 2.0]]]))
    m = DenseMetrics(["depth"])
    m.update({"depth": pred}, {"depth": true})
    r = m.result()
    # Valid pairs (pred, true): (1, 2), (4, 4), (2, 1).
    assert r["depth/abs_rel"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert r["depth/rmse"] == pytest.approx(np.sqrt(2 / 3))
    assert r["depth/log_rmse"] == pytest.approx(np.sqrt(2 * np.log(2) ** 2 / 3))
    # Ratios 2, 1, 2: only the exact pixel is under 1.25, 1.5625 and 1.953.
    assert r["depth/delta1"] == r["depth/delta2"] == r["depth/delta3"] == pytest.approx(1 / 3)


def test_median_scaling_forgives_a_global_scale():
    true = np.random.default_rng(0).uniform(1, 5, (2, 4, 4))
    m = DenseMetrics(["depth"], median_scaling=True)
    m.update({"depth": np.log(3.0 * true)}, {"depth": true})
    r = m.result()
    assert r["depth/abs_rel"] == pytest.approx(0.0, abs=1e-12)
    assert r["depth/delta1"] == 1.0


def test_normal_metrics_by_hand():
    def unit(deg):
        a = np.deg2rad(deg)
        return np.array([np.sin(a), 0.0, -np.cos(a)])
    pred = np.stack([unit(0), unit(0)])[None, None]        # (1, 1, 2, 3)
    true = np.stack([unit(10), unit(20)])[None, None]
    m = DenseMetrics(["normals"])
    m.update({"normals": pred}, {"normals": true, "depth": np.ones((1, 1, 2))})
    r = m.result()
    assert r["normals/mean_deg"] == pytest.approx(15.0, abs=1e-3)
    assert r["normals/median_deg"] == pytest.approx(15.0, abs=1e-3)
    assert r["normals/within_11.25"] == 0.5
    assert r["normals/within_22.5"] == r["normals/within_30"] == 1.0


def test_contours_with_pixel_tolerance_and_best_threshold():
    true = np.zeros((1, 5, 5), bool)
    true[0, :, 2] = True                             # a vertical contour
    prob = np.full((1, 5, 5), 0.01)
    prob[0, :, 3] = 0.9                              # found, one pixel off
    prob[0, 0, 0] = 0.5                              # a weaker false alarm
    logits = np.log(prob / (1 - prob))
    m = DenseMetrics(["contours"], tolerance=1)
    m.update({"contours": logits}, {"contours": true, "depth": np.ones((1, 5, 5))})
    r = m.result()
    assert r["contours/f"] == pytest.approx(1.0)
    assert 0.5 < r["contours/threshold"] <= 0.9
    strict = DenseMetrics(["contours"], tolerance=0)
    strict.update({"contours": logits}, {"contours": true, "depth": np.ones((1, 5, 5))})
    assert strict.result()["contours/f"] == 0.0
    # Below 0.5 the false alarm counts too: precision 5/6 at full recall.
    low = DenseMetrics(["contours"], thresholds=np.array([0.3]))
    low.update({"contours": logits}, {"contours": true, "depth": np.ones((1, 5, 5))})
    assert low.result()["contours/precision"] == pytest.approx(5 / 6)


def test_dilate():
    m = np.zeros((5, 5), bool)
    m[2, 2] = True
    assert dilate(m, 1).sum() == 9 and dilate(m, 2).sum() == 25 and dilate(m, 0).sum() == 1


def test_semantic_miou_and_pixel_accuracy_by_hand():
    # 2 images of 1x4 pixels, 3 classes; the last pixel of each is unlabelled.
    true = np.array([[[0, 0, 1, -1]], [[1, 1, 0, -1]]])
    pred_class = np.array([[[0, 1, 1, 2]], [[1, 1, 1, 2]]])
    logits = np.eye(3)[pred_class] * 5.0
    m = DenseMetrics(["semantics"])
    m.update({"semantics": logits[:1]}, {"semantics": true[:1], "depth": np.ones((1, 1, 4))})
    m.update({"semantics": logits[1:]}, {"semantics": true[1:], "depth": np.ones((1, 1, 4))})
    r = m.result()
    # class 0: hit 1, union 3; class 1: hit 3, union 5; class 2: never true or
    # predicted on a labelled pixel -> left out.
    assert r["semantics/miou"] == pytest.approx((1 / 3 + 3 / 5) / 2)
    assert r["semantics/pixel_accuracy"] == pytest.approx(4 / 6)
