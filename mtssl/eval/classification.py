"""Classification losses and scores shared by the linear probe and fine-tuning.

Labels are int class ids (single-label) or float multi-hot vectors
(multi-label) whose entries are 1 (present), 0 (absent) or IGNORE (-1:
present only as "difficult" objects in PASCAL VOC, which the VOC protocol
neither trains on nor scores).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtssl.data.labeled import IGNORE


def classification_loss(logits: jax.Array, labels: jax.Array, multilabel: bool) -> jax.Array:
    """Mean loss over the leading batch axis (any extra leading axes kept):
    softmax cross-entropy, or per-class sigmoid cross-entropy averaged over
    the entries that are not IGNORE."""
    if multilabel:
        known = labels != IGNORE
        ce = optax.sigmoid_binary_cross_entropy(logits, jnp.where(known, labels, 0.0))
        return jnp.sum(ce * known, (-2, -1)) / jnp.maximum(jnp.sum(known, (-2, -1)), 1)
    labels = jnp.broadcast_to(labels, logits.shape[:-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(-1)


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the precision-recall curve of one class (VOC >= 2010 style:
    the mean of the precisions at each positive's rank); IGNORE entries are
    left out."""
    keep = positives != IGNORE
    order = np.argsort(-scores[keep], kind="stable")
    hits = positives[keep][order] > 0
    if not hits.any():
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def mean_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    aps = [average_precision(scores[:, c], labels[:, c]) for c in range(labels.shape[1])]
    return float(np.nanmean(aps))


def multilabel_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Share of known (class, image) entries whose sign of `scores` is right."""
    known = labels != IGNORE
    return float(((scores > 0) == (labels > 0))[known].mean())
