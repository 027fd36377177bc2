"""Numbers of the explanation analysis: maps of two models compared cell by cell (docs/method.md, "Explanations").

Maps are (pairs, cells) arrays: one row per ground-truth-positive (image, class) pair, the H'xW'
CAM cells flattened.
"""

from __future__ import annotations

import numpy as np


# ----------------------------------------------------------------------------------------------
def slope_through_origin(reference: np.ndarray, model: np.ndarray) -> float:
    """Least squares of model = slope x reference (no intercept)."""
    reference, model = reference.astype(np.float64), model.astype(np.float64)
    denominator = np.sum(reference * reference)
    return float(np.sum(reference * model) / denominator) if denominator > 0 else float("nan")


def pearson_per_pair(reference: np.ndarray, model: np.ndarray) -> np.ndarray:
    """Correlation of each pair's two maps, (pairs, cells) -> (pairs,); NaN where a map is constant."""
    x = reference - reference.mean(1, keepdims=True)
    y = model - model.mean(1, keepdims=True)
    denominator = np.sqrt(np.sum(x * x, 1) * np.sum(y * y, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, np.sum(x * y, 1) / denominator, np.nan)


def top_k_iou_per_pair(reference: np.ndarray, model: np.ndarray, percent: float) -> np.ndarray:
    """IoU of the top-`percent`% cells of each pair's two maps, (pairs, cells) -> (pairs,)."""
    cells = reference.shape[1]
    k = min(cells, max(1, round(cells * percent / 100)))

    def top(maps):
        mask = np.zeros(maps.shape, bool)
        np.put_along_axis(mask, np.argsort(-maps, axis=1, kind="stable")[:, :k], True, axis=1)
        return mask

    a, b = top(reference), top(model)
    return np.sum(a & b, 1) / np.sum(a | b, 1)


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if values.size else float("nan")


def _median(values: np.ndarray) -> float:
    return float(np.median(values)) if values.size else float("nan")


def compare(reference: np.ndarray, model: np.ndarray, top_k_percent: float) -> dict:
    """The cell-by-cell and per-pair comparison of one model's maps with the reference's (pairs, cells)."""
    positive, negative = reference > 0, reference < 0
    ratio = model / np.where(reference == 0, 1, reference)
    pearson = pearson_per_pair(reference, model)
    return {
        "slope_positive_cells": slope_through_origin(reference[positive], model[positive]),
        "slope_negative_cells": slope_through_origin(reference[negative], model[negative]),
        "median_ratio_positive_cells": _median(ratio[positive]),
        "median_ratio_negative_cells": _median(ratio[negative]),
        "mean_on_reference_positive_cells": _mean(model[positive]),
        "fraction_positive_on_reference_positive_cells": _mean((model[positive] > 0).astype(np.float64)),
        "pearson_mean": float(np.nanmean(pearson)) if np.isfinite(pearson).any() else float("nan"),
        "pearson_median": float(np.nanmedian(pearson)) if np.isfinite(pearson).any() else float("nan"),
        "pearson_undefined_pairs": int(np.isnan(pearson).sum()),
        f"top{top_k_percent:g}_iou_mean": float(np.mean(top_k_iou_per_pair(reference, model, top_k_percent))),
        "num_positive_cells": int(positive.sum()),
        "num_negative_cells": int(negative.sum()),
    }


def summarize(columns, maps, probs, reference: str, top_k_percent: float) -> dict:
    models = {}
    for column in columns:
        own = maps[column.name]
        entry = {
            "run": column.run,
            "alpha": column.alpha,
            "mean_positive_cell_attribution": _mean(own[own > 0]),
            "mean_logit": float(np.mean(own)),  # the spatial mean of the map is the logit
            "mean_probability": float(np.mean(probs[column.name])),
        }
        if column.name != reference:
            entry["vs_reference"] = compare(maps[reference], own, top_k_percent)
        models[column.name] = entry
    return models
