"""Formatted arrays -> our three splits with their observed labels (docs/method.md ("Labels"), §4), pure numpy.

How the formatted files relate to our splits, exactly as in the public single-positive code
(Cole et al. preproc/generate_observed_labels.py, then datasets.py at load time):
  1. The observation is generated once per formatted file, each with a fresh
     RandomState(1200), over ALL its rows in file order: formatted_train_* holds the whole
     official train split, formatted_val_* the official val split.
  2. Only then is the official train split cut 80/20 (perm = RandomState(1200).permutation(N),
     n_val = round(0.2 N), train = sorted(perm[:N - n_val]), val = sorted(perm[-n_val:])).
So our 'train' labels_obs are rows of the observation of the WHOLE train file, selected; they are
not an observation generated over the 80% alone (that would pick other positives).
'validation' stores its rows of the same observation in labels_obs, but is evaluated on 'labels'
(full labels), as the reference does; 'test' = the official val file, evaluated on full labels
(its labels_obs = the val file's own observation, kept for completeness).
A missing image is dropped only after all of this, so it never shifts anyone else's positive.
"""

from __future__ import annotations

import numpy as np

from bridgegap_jax.prepare.observation import observe_single_positive

SEED = 1200
VAL_FRACTION = 0.2


def train_val_rows(num_examples: int, val_fraction: float = VAL_FRACTION, seed: int = SEED):
    """(train rows, validation rows) of the official train split, both sorted."""
    n_val = int(np.round(val_fraction * num_examples))
    perm = np.random.RandomState(seed).permutation(num_examples)
    return np.sort(perm[: num_examples - n_val]), np.sort(perm[num_examples - n_val :])


def splits(formatted) -> dict[str, dict[str, np.ndarray]]:
    """{'train' | 'validation' | 'test': {'images', 'labels', 'labels_obs', 'file_rows'}}.

    file_rows: the row of each example in its formatted file (what the observation was keyed by).
    A stored formatted_*_labels_obs.npy is used as is; otherwise the observation is generated.
    """
    observed = {
        phase: formatted.labels_obs[phase]
        if phase in formatted.labels_obs
        else observe_single_positive(formatted.labels[phase], num_pos=1, num_neg=0, seed=SEED)
        for phase in ("train", "val")
    }
    train_rows, val_rows = train_val_rows(len(formatted.images["train"]))
    out = {}
    for split, phase, rows in (
        ("train", "train", train_rows),
        ("validation", "train", val_rows),
        ("test", "val", np.arange(len(formatted.images["val"]))),
    ):
        out[split] = {
            "images": formatted.images[phase][rows],
            "labels": formatted.labels[phase][rows],
            "labels_obs": observed[phase][rows],
            "file_rows": rows,
        }
    return out
