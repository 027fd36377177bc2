"""`bridgegap_demo` and `bridgegap_demo_large`: mosaics of scikit-learn's handwritten digits.

The glyphs are the 1797 real handwritten 8x8 digits bundled with scikit-learn (nothing is
downloaded), scaled 3x to 24x24 and drawn by the mosaic builder (prepare/mosaics.py). Splits draw
from disjoint subsets of those digits (no source image is shared between train and evaluation).
The train split carries single-positive observed labels (Cole et al. generator, see
`observation.py`); validation/test carry the full labels.
"""

import dataclasses
import functools

import numpy as np

from bridgegap_jax.prepare import mosaics

CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
NUM_CLASSES = len(CLASS_NAMES)
SCALE = 3  # 8x8 digit -> 24x24 glyph
SPLIT_SIZES = {"train": 1600, "validation": 320, "test": 480}
# Fractions of the (permuted) 1797 sklearn digits given to each split.
_SOURCE_FRACTIONS = (("train", 0.60), ("validation", 0.15), ("test", 0.25))

_DESCRIPTION = (
    "Multi-label demo: 96x96 RGB mosaics of 1-4 distinct handwritten digits "
    "(sklearn load_digits) on a 3x3 grid, with random dark background, "
    "per-digit colour and Gaussian noise. Classes: "
    + ", ".join(CLASS_NAMES)
    + ". `labels` are full labels; `labels_obs` are single-positive observed "
    "labels on train (Cole et al. RandomState(1200)) and full labels elsewhere."
)


@functools.lru_cache(maxsize=1)  # Parsed once; callers must not mutate.
def _load_digits():
    from sklearn.datasets import load_digits  # Bundled data, no download.

    d = load_digits()
    return d.images, d.target  # (1797, 8, 8) float 0..16, (1797,) int.


def source_digit_indices(split: str) -> np.ndarray:
    """Sorted sklearn digit indices the given split draws its digits from."""
    n = len(_load_digits()[1])
    perm = np.random.default_rng(2023).permutation(n)
    start = 0
    for name, frac in _SOURCE_FRACTIONS:
        stop = n if name == "test" else start + int(round(frac * n))
        if name == split:
            return np.sort(perm[start:stop])
        start = stop
    raise ValueError(f"Unknown split {split!r}; expected one of {list(SPLIT_SIZES)}.")


@functools.lru_cache(maxsize=3)
def digit_glyphs(split: str) -> list[np.ndarray]:
    """Per class, the split's digits as (n, 24, 24) alpha masks in [0, 1]."""
    src = source_digit_indices(split)
    digits, targets = _load_digits()
    alpha = np.kron(digits / 16.0, np.ones((1, SCALE, SCALE)))
    return [alpha[src[targets[src] == c]] for c in range(NUM_CLASSES)]


DEMO = mosaics.MosaicSet("demo", CLASS_NAMES, digit_glyphs, SPLIT_SIZES, True, _DESCRIPTION)
# The same mosaics, more of them: big enough for batches of 512 (study of large-batch recipes).
DEMO_LARGE = mosaics.MosaicSet(
    "demo_large",
    CLASS_NAMES,
    digit_glyphs,
    {"train": 12800, "validation": 1280, "test": 1920},
    True,
    _DESCRIPTION,
)
# demo_large's mosaics and more: 2^16 training mosaics, so every batch from 16 to 4,096 divides an
# epoch, with demo_large's as the first 12,800 and its validation and test splits (the builder is seeded
# per split: the first mosaics are the same for any count). For steps-to-target curves up to 4,096.
DEMO_XL = dataclasses.replace(DEMO_LARGE, name="demo_xl", sizes={**DEMO_LARGE.sizes, "train": 65536})


def make_mosaics(split: str, count: int | None = None) -> dict:
    """The demo's split (its first `count` mosaics): see mosaics.make_mosaics."""
    return mosaics.make_mosaics(DEMO, split, count)
