"""Evaluation: every example of a split once, its probabilities, mAP (and groups) and the loss.

Batches come from the input pipeline's evaluation segments: this process's rows, the last global
batch padded. Probabilities and labels are gathered through the devices, so every process holds
the whole split in stored order and computes the same metrics; only process 0 writes them.
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

from bridgegap_jax.base import sharding
from bridgegap_jax.data import input_pipeline
from bridgegap_jax.data.catalog import Dataset
from bridgegap_jax.run import metrics
from bridgegap_jax.run.rundir import json_number


def predict(
    eval_fn: Callable, model_vars: dict, batches: Iterable[dict], mesh, num_examples: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """(probabilities (N, C), labels (N, C), BCE sum over the counted entries) in stored order.

    Global batch b holds examples b*B .. b*B+B-1 (process p's rows are the p-th block), so the
    padding is the rows past `num_examples`; nothing else needs to travel.
    """
    probs, labels, bce = [], [], 0.0
    pending = []

    def collect(item):
        nonlocal bce
        device_probs, device_bce, device_labels = item
        p, b, y = (
            sharding.to_host(device_probs),
            sharding.to_host(device_bce),
            sharding.to_host(device_labels),
        )
        keep = min(len(p), num_examples - sum(len(x) for x in probs))
        probs.append(p[:keep])
        labels.append(y[:keep])
        bce += float(np.sum(b[:keep], dtype=np.float64))

    for _, device in sharding.prefetch_to_device(batches, mesh, ("image", "labels")):
        pending.append((*eval_fn(model_vars, device["image"], device["labels"]), device["labels"]))
        if len(pending) > 2:  # keep the device busy while the host copies an earlier result
            collect(pending.pop(0))
    for item in pending:
        collect(item)
    return np.concatenate(probs), np.concatenate(labels), bce


def summarize(dataset: Dataset, probs: np.ndarray, labels: np.ndarray, bce_sum: float) -> dict:
    """mAP in both conventions, per frequency group where the dataset has groups, and the mean BCE."""
    mask = dataset.eval_mask(labels)
    summary = metrics.summarize(probs, labels, mask=mask, groups=dataset.groups)
    entries = labels.size if mask is None else int(mask.sum())
    result = {
        "map": float(summary["map"]),
        "map_with_positives": json_number(summary["map_with_positives"]),
        "loss": bce_sum / max(entries, 1),
        "num_examples": int(len(labels)),
        "ap": [float(a) for a in summary["ap"]],
    }
    for key, group in summary.items():
        if key.startswith("group"):
            result[key] = {
                "map": json_number(group["map"]),
                "map_with_positives": json_number(group["map_with_positives"]),
            }
    return result


def evaluate(
    eval_fn: Callable, model_vars: dict, dataset: Dataset, split: str, batches: Iterable[dict], mesh
) -> dict:
    probs, labels, bce = predict(eval_fn, model_vars, batches, mesh, dataset.split_sizes[split])
    return summarize(dataset, probs, labels, bce)


def evaluate_split(
    eval_fn: Callable,
    model_vars: dict,
    dataset: Dataset,
    split: str,
    options: input_pipeline.Options,
    mesh,
    workers: int = 0,
) -> dict:
    """One pass over `split` with a pipeline of its own (tools and tests; training reuses its stream)."""
    reader = input_pipeline.BatchReader(dataset, input_pipeline.eval_plan(dataset, split, options), options)
    with input_pipeline.Stream(reader, workers=workers) as stream:
        return evaluate(eval_fn, model_vars, dataset, split, stream, mesh)
