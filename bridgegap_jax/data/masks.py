"""Simulated partial labels, a pure function of (full labels, seed, example index).

config.data.observation picks the observed training labels:
  'stored'           the dataset's labels_obs (single positive: the benchmark's seeded generator
                     over the formatted file; OpenImages: the human verifications). The default.
  'single_positive'  one positive per image, drawn uniformly.
  'k_positives:K'    K positives per image (all of them if it has fewer).
  'fraction:F'       round(F * n) of an image's n known labels, drawn uniformly; they keep their
                     value (positive, or observed negative), the rest become unobserved.
The draws are keyed by (seed, example index), so any process count, worker, shard or read order
sees the same observed labels in every epoch. They are therefore not the benchmark's sequential
RandomState draws (those depend on every row before); 'stored' is the benchmark's observation,
these are for studying other supervision levels.

Encodings (catalog.DatasetSpec.label_encoding): 'single_positive' datasets store full labels
{0, 1} and observe 1 positive / -1 observed negative / 0 unobserved; 'partial' (OpenImages) stores
{1, 0, -1} verified labels and observes 1 / 0 / -1 unobserved, drawing only from verified entries.
"""

from __future__ import annotations

import numpy as np

MODES = ("stored", "single_positive", "k_positives:K", "fraction:F")
ALLOWED = f"one of {', '.join(MODES)} (K a positive integer, 0 < F <= 1)"  # what parse() reads
# Observed value of (positive, negative, unobserved) entries in each encoding.
CODES = {"single_positive": (1, -1, 0), "partial": (1, 0, -1)}


def parse(mode: str) -> tuple[str, float] | None:
    """None for 'stored', else ('positives', K) or ('fraction', F); a clear error otherwise."""
    error = ValueError(f"config.data.observation={mode!r} is not {ALLOWED}")
    if not isinstance(mode, str):
        raise error
    if mode == "stored":
        return None
    if mode == "single_positive":
        return "positives", 1
    kind, _, value = mode.partition(":")
    try:
        if kind == "k_positives" and int(value) >= 1 and str(int(value)) == value:
            return "positives", int(value)
        if kind == "fraction" and 0 < float(value) <= 1:
            return "fraction", float(value)
    except ValueError:
        pass
    raise error


def observe(labels: np.ndarray, index: np.ndarray, *, mode: str, seed: int, encoding: str) -> np.ndarray:
    """Observed int8 labels (B, C) of examples `index` (B,) from their stored labels (B, C)."""
    parsed = parse(mode)
    if parsed is None:
        raise ValueError("observe() simulates labels; 'stored' reads labels_obs instead")
    if encoding not in CODES:
        raise ValueError(f"label encoding {encoding!r} is not one of {sorted(CODES)}")
    kind, amount = parsed
    pos_code, neg_code, unobserved = CODES[encoding]
    labels = np.asarray(labels, np.int32)
    positive = labels == 1
    known = positive | (labels == (0 if encoding == "single_positive" else neg_code))
    pool = positive if kind == "positives" else known
    out = np.empty(labels.shape, np.int8)
    for row, example in enumerate(np.asarray(index)):
        draw = np.random.default_rng([seed, int(example)]).random(labels.shape[1])
        # Rank of each pool entry among the pool's entries in draw order; keep the first `count`.
        rank = np.empty(labels.shape[1], np.int64)
        rank[np.argsort(np.where(pool[row], draw, 2.0), kind="stable")] = np.arange(labels.shape[1])
        size = int(pool[row].sum())
        count = min(size, int(amount)) if kind == "positives" else int(np.round(amount * size))
        keep = pool[row] & (rank < count)
        out[row] = np.where(keep & positive[row], pos_code, np.where(keep, neg_code, unobserved))
    return out
