"""Classification losses and scores: values computed by hand, ignored labels."""

import jax.numpy as jnp
import numpy as np
import pytest

from mtssl.eval import classification
from mtssl.eval.classification import IGNORE


def test_average_precision_by_hand():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    positives = np.array([1, 0, 1, 0, 1])
    # Precision at each positive's rank: 1/1, 2/3, 3/5.
    assert classification.average_precision(scores, positives) == pytest.approx(
        (1 + 2 / 3 + 3 / 5) / 3)
    labels = np.stack([positives, 1 - positives], 1)
    both = np.stack([scores, -scores], 1)
    # Class 2 ranks items 4, 3, 2, 1, 0; its positives (3 and 1) come 2nd and
    # 4th: precisions 1/2 and 2/4, AP 0.5.
    assert classification.mean_average_precision(both, labels) == pytest.approx(
        ((1 + 2 / 3 + 3 / 5) / 3 + 0.5) / 2)


def test_ignored_entries_are_neither_scored_nor_trained_on():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    # The ignored item outranks a positive; without it the ranking is 1, 0, 1, 1.
    positives = np.array([1, IGNORE, 0, 1, 1])
    assert classification.average_precision(scores, positives) == pytest.approx(
        (1 + 2 / 3 + 3 / 4) / 3)
    labels = jnp.array([[1.0, IGNORE, 0.0]])
    logits = jnp.array([[2.0, -7.0, -1.0]])
    expected = (np.log1p(np.exp(-2.0)) + np.log1p(np.exp(-1.0))) / 2
    loss = classification.classification_loss(logits, labels, multilabel=True)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    changed = classification.classification_loss(logits.at[0, 1].set(9.0), labels, True)
    assert float(changed) == pytest.approx(expected, rel=1e-6)
    assert classification.multilabel_accuracy(np.array([[1.0, 1.0, 1.0]]),
                                              np.asarray(labels)) == 0.5


def test_softmax_loss_keeps_leading_axes():
    logits = jnp.array([[[0.0, np.log(3.0)]], [[0.0, 0.0]]])       # (2 weights, 1, 2)
    loss = classification.classification_loss(logits, jnp.array([1]), multilabel=False)
    np.testing.assert_allclose(loss, [np.log(4 / 3), np.log(2)], rtol=1e-6)
