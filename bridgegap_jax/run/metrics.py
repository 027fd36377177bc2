"""Multi-label evaluation metrics (NumPy only).

Average precision follows sklearn's `average_precision_score` exactly, including
its handling of tied scores (one threshold per distinct score), but is
vectorised over classes so that OpenImages-sized matrices (125k x 5000) are
feasible. Optional masks give observed-only evaluation (OpenImages: the mask is
`labels != -1`).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = [
    "average_precision",
    "mean_average_precision",
    "frequency_groups",
    "summarize",
]


def _check_inputs(scores, labels, mask):
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D (N, C), got shape {scores.shape}")
    if labels.shape != scores.shape:
        raise ValueError(f"labels shape {labels.shape} does not match scores shape {scores.shape}")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != scores.shape:
            raise ValueError(f"mask shape {mask.shape} does not match scores shape {scores.shape}")
    return scores, labels, mask


def _ap_chunk(scores: np.ndarray, pos: np.ndarray, mask: Optional[np.ndarray]) -> np.ndarray:
    """AP for a block of classes: scores (N, k) float64, pos and mask (N, k) bool.

    Masked-out entries get weight 0: they add nothing to the cumulative TP/FP
    counts, so they cannot change any threshold's precision or recall even when
    they tie with counted entries. Operations are in place to bound memory.
    """
    order = np.argsort(-scores, axis=0, kind="stable")  # descending scores
    s = np.take_along_axis(scores, order, axis=0)
    # A threshold ends where the next sorted score differs (or at the last row):
    # tied scores form one operating point, as in sklearn.
    boundary = np.ones(s.shape, dtype=bool)
    np.not_equal(s[:-1], s[1:], out=boundary[:-1])
    del s

    tp = np.take_along_axis(pos, order, axis=0).astype(np.float64)
    if mask is None:
        fp = 1.0 - tp
    else:
        fp = np.take_along_axis(mask, order, axis=0).astype(np.float64)
        tp *= fp
        fp -= tp
    del order
    np.cumsum(tp, axis=0, out=tp)
    np.cumsum(fp, axis=0, out=fp)

    # Precision is only needed where recall increases (tp > 0 there); guard the
    # division so thresholds holding only masked entries (tp + fp == 0) are safe.
    precision = fp
    precision += tp
    np.divide(tp, precision, out=precision, where=precision > 0)

    # Recall gain per threshold = tp now - tp at the previous threshold. tp is
    # non-decreasing, so a running max of tp-at-boundaries forward-fills the latter.
    tp_prev = np.maximum.accumulate(np.where(boundary, tp, 0.0), axis=0)
    num_pos = tp[-1].copy()
    gain = tp
    gain[1:] -= tp_prev[:-1]
    del tp_prev
    gain *= precision
    ap_sum = np.where(boundary, gain, 0.0).sum(axis=0)
    # Classes without positives: AP = 0 (sklearn also yields 0, with a warning).
    return np.divide(ap_sum, num_pos, out=np.zeros_like(ap_sum), where=num_pos > 0)


def average_precision(scores, labels, mask=None, chunk_size: int = 256) -> np.ndarray:
    """Per-class AP, shape (C,); positives are `labels == 1` (labels may hold 0/1/-1).

    Equals `sklearn.metrics.average_precision_score(labels[m, c] == 1, scores[m, c])`
    with `m = mask[:, c]` (all rows if mask is None). Classes without a counted
    positive get AP 0. Classes are processed `chunk_size` at a time to bound memory.
    """
    scores, labels, mask = _check_inputs(scores, labels, mask)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    num_classes = scores.shape[1]
    ap = np.zeros(num_classes, dtype=np.float64)
    if scores.shape[0] == 0:
        return ap
    for start in range(0, num_classes, chunk_size):
        sl = slice(start, start + chunk_size)
        s = scores[:, sl].astype(np.float64)
        if np.isnan(s).any():
            raise ValueError("scores contain NaN")
        ap[sl] = _ap_chunk(s, labels[:, sl] == 1, None if mask is None else mask[:, sl])
    return ap


def mean_average_precision(ap, has_positive) -> dict:
    """Both mAP conventions (in percent) for per-class `ap` and bool `has_positive`.

    'map': mean over all classes, AP 0 for classes without positives (headline).
    'map_with_positives': mean over classes with >= 1 counted positive (NaN if none).
    """
    ap = np.asarray(ap, dtype=np.float64)
    has_positive = np.asarray(has_positive, dtype=bool)
    if ap.ndim != 1 or has_positive.shape != ap.shape:
        raise ValueError(
            f"ap shape {ap.shape} and has_positive shape {has_positive.shape} must be equal and 1-D"
        )
    return {
        "map": 100.0 * ap.mean() if ap.size else float("nan"),
        "map_with_positives": (100.0 * ap[has_positive].mean() if has_positive.any() else float("nan")),
        "num_classes": int(ap.size),
        "num_classes_without_positives": int((~has_positive).sum()),
    }


def frequency_groups(class_counts, num_groups: int = 5) -> np.ndarray:
    """Group id 1..num_groups per class, shape (C,); group 1 = rarest classes.

    Classes are sorted by count ascending (ties by class index, stable sort) and
    split into `num_groups` equal consecutive parts; C must divide evenly.
    """
    counts = np.asarray(class_counts)
    if counts.ndim != 1:
        raise ValueError(f"class_counts must be 1-D, got shape {counts.shape}")
    num_classes = counts.shape[0]
    if num_groups < 1 or num_classes % num_groups != 0:
        raise ValueError(f"{num_classes} classes cannot be split into {num_groups} equal groups")
    order = np.argsort(counts, kind="stable")
    groups = np.empty(num_classes, dtype=np.int64)
    groups[order] = np.arange(num_classes) // (num_classes // num_groups) + 1
    return groups


def summarize(scores, labels, mask=None, groups=None, chunk_size: int = 256) -> dict:
    """Per-class AP plus mAP (both conventions) overall and per frequency group.

    Returns {'ap': (C,), 'has_positive': (C,) bool, 'map', 'map_with_positives',
    'num_classes_without_positives', 'all': {...}, 'group<g>': {...} per group id},
    where each {...} is `mean_average_precision` over that subset of classes.
    """
    scores, labels, mask = _check_inputs(scores, labels, mask)
    ap = average_precision(scores, labels, mask, chunk_size=chunk_size)
    pos = labels == 1
    has_positive = (pos if mask is None else pos & mask).any(axis=0)
    overall = mean_average_precision(ap, has_positive)
    out = {
        "ap": ap,
        "has_positive": has_positive,
        "map": overall["map"],
        "map_with_positives": overall["map_with_positives"],
        "num_classes_without_positives": overall["num_classes_without_positives"],
        "all": overall,
    }
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != ap.shape:
            raise ValueError(f"groups shape {groups.shape} does not match number of classes {ap.shape}")
        for g in np.unique(groups):
            sel = groups == g
            out[f"group{int(g)}"] = mean_average_precision(ap[sel], has_positive[sel])
    return out
