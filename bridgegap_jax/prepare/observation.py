"""Single-positive label observation (Cole et al., CVPR 2021).

Every public single-positive multi-label codebase (Cole et al., and BoostLU
on top of it) derives the observed training labels from the full labels with
the same seeded generator; reproducing it bit-exactly means our observed
positives are the very ones the published numbers were obtained with.
"""

import numpy as np


def observe_single_positive(
    labels: np.ndarray, num_pos: int = 1, num_neg: int = 0, seed: int = 1200
) -> np.ndarray:
    """Keeps `num_pos` random positives (and `num_neg` negatives) per row.

    Args:
      labels: (N, C) full labels with values in {0, 1}.
      num_pos: positives kept per row (-1: all).
      num_neg: negatives kept per row, marked -1 (-1: all).
      seed: seed of the single `np.random.RandomState` used for all rows.

    Returns:
      (N, C) int8 array: 1 observed positive, -1 observed negative, 0 unobserved.
      int8 because it holds the -1/0/1 codes exactly and is small on disk.

    For every row, in order, the positive indices are shuffled and then the
    negative indices are shuffled, even when `num_neg == 0`. That second
    shuffle consumes random state, so it decides which positive is picked in
    all later rows; skipping it gives a different (non-reproducible) set of
    observed labels than the reference code.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D (N, C), got shape {labels.shape}.")
    values = np.unique(labels)
    if not np.isin(values, (0, 1)).all():
        raise ValueError(f"labels must be in {{0, 1}}, got values {values[:10]}.")

    # Python slicing: [:-1] would drop one element, so -1 ("all") -> None.
    pos_stop = None if num_pos == -1 else num_pos
    neg_stop = None if num_neg == -1 else num_neg
    rng = np.random.RandomState(seed)
    obs = np.zeros(labels.shape, np.int8)
    for i in range(labels.shape[0]):
        idx = np.nonzero(labels[i] == 1)[0]
        rng.shuffle(idx)
        obs[i, idx[:pos_stop]] = 1
        idx = np.nonzero(labels[i] == 0)[0]
        rng.shuffle(idx)  # Must run even if num_neg == 0: it advances the RNG.
        obs[i, idx[:neg_stop]] = -1
    return obs
