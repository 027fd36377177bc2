"""`bridgegap_demo`: a small multi-label dataset built offline from sklearn digits.

Each example is a 96x96 RGB mosaic (3x3 grid of 32x32 tiles) holding 1-4
distinct digit classes, each in its own tile. The digits come from the 1797
real handwritten 8x8 images bundled with scikit-learn, so nothing is
downloaded. Splits draw from disjoint subsets of those digits (no source
image is shared between train and evaluation) and everything is seeded, so
a rebuild is byte-identical.

The train split carries single-positive observed labels (Cole et al.
generator, see `observation.py`); validation/test carry the full labels.
Written by the same writer as every prepared dataset, images as PNG.
"""

import functools
import io
import os

import numpy as np

from bridgegap_jax.prepare.observation import observe_single_positive

CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SIZE, TILE, GRID, SCALE = 96, 32, 3, 3  # 8x8 digit -> 24x24 in a 32x32 tile.
SPLIT_SIZES = {"train": 1600, "validation": 320, "test": 480}
# The same mosaics, more of them: big enough for batches of 512 (study of large-batch recipes).
SIZES = {"demo": SPLIT_SIZES, "demo_large": {"train": 12800, "validation": 1280, "test": 1920}}
_SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2}
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


def make_mosaics(split: str, count: int | None = None) -> dict:
    """Generates the whole split as numpy arrays (what the builder stores).

    Returns a dict with `images` (N,96,96,3) uint8, `labels` (N,10) int8,
    `labels_obs` (N,10) int8, `index` (N,) int64, `image_id` (N,) str.
    """
    src = source_digit_indices(split)
    digits, targets = _load_digits()
    by_class = [src[targets[src] == c] for c in range(NUM_CLASSES)]
    n = SPLIT_SIZES[split] if count is None else count  # the first mosaics are the same for any count
    rng = np.random.default_rng([_SPLIT_SEEDS[split], 2023])

    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    labels = np.zeros((n, NUM_CLASSES), np.int8)
    for i in range(n):
        k = rng.integers(1, 5)  # 1..4 classes present.
        classes = rng.choice(NUM_CLASSES, size=k, replace=False)
        tiles = rng.choice(GRID * GRID, size=k, replace=False)
        bg = rng.uniform(0, 60, size=3)  # Dark background colour.
        img = np.broadcast_to(bg, (IMAGE_SIZE, IMAGE_SIZE, 3)).copy()
        for c, t in zip(classes, tiles):
            digit = digits[rng.choice(by_class[c])] / 16.0  # Alpha in 0..1.
            alpha = np.kron(digit, np.ones((SCALE, SCALE)))[..., None]  # 24x24x1.
            fg = rng.uniform(140, 255, size=3)  # Bright per-digit colour.
            dy, dx = rng.integers(0, TILE - 8 * SCALE + 1, size=2)  # 0..8 px.
            y, x = (t // GRID) * TILE + dy, (t % GRID) * TILE + dx
            patch = img[y : y + 8 * SCALE, x : x + 8 * SCALE]
            img[y : y + 8 * SCALE, x : x + 8 * SCALE] = (1 - alpha) * patch + alpha * fg
            labels[i, c] = 1
        img += rng.normal(0, 8, size=img.shape)  # Mild pixel noise.
        images[i] = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    if split == "train":
        # One fresh RandomState(1200) over the whole split, rows in index order.
        labels_obs = observe_single_positive(labels).astype(np.int8)
    else:
        labels_obs = labels.copy()
    return {
        "images": images,
        "labels": labels,
        "labels_obs": labels_obs,
        "index": np.arange(n, dtype=np.int64),
        "image_id": np.array([f"{split}_{j:06d}" for j in range(n)]),
    }


def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def build(data_dir: str, overwrite: bool = False, name: str = "demo") -> str:
    """Writes dataset `name` (demo | demo_large) into <data_dir>/bridgegap_<name>/1.0.0 (PNG images)."""
    from bridgegap_jax.datasets import catalog
    from bridgegap_jax.prepare import writer

    splits = {split: make_mosaics(split, count) for split, count in SIZES[name].items()}
    sources = {
        split: writer.SplitSource(
            image_ids=[str(i) for i in d["image_id"]],
            paths=[encode_png(image) for image in d["images"]],
            labels=lambda row, d=d: (d["labels"][row], d["labels_obs"][row]),
        )
        for split, d in splits.items()
    }

    def finish(folder, results):
        with open(os.path.join(folder, catalog.CLASS_NAMES_FILE), "w") as f:
            f.writelines(f"{name}\n" for name in CLASS_NAMES)

    folder, _ = writer.write_dataset(
        data_dir,
        catalog.spec(name).tfds_name,
        sources,
        num_classes=NUM_CLASSES,
        compress_labels=False,
        description=_DESCRIPTION,
        max_short_side=None,
        workers=1,
        overwrite=overwrite,
        image_format="png",
        finish=finish,
        quiet=True,
    )
    print(f"built the {name} dataset in {folder}", flush=True)
    return folder
