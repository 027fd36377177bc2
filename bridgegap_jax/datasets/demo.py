"""`bridgegap_demo`: a small multi-label dataset built offline from sklearn digits.

Each example is a 96x96 RGB mosaic (3x3 grid of 32x32 tiles) holding 1-4
distinct digit classes, each in its own tile. The digits come from the 1797
real handwritten 8x8 images bundled with scikit-learn, so nothing is
downloaded. Splits draw from disjoint subsets of those digits (no source
image is shared between train and evaluation) and everything is seeded, so
a rebuild is byte-identical.

The train split carries single-positive observed labels (Cole et al.
generator, see `observation.py`); validation/test carry the full labels.
"""

import functools

import numpy as np
import tensorflow_datasets as tfds

from bridgegap_jax.datasets.observation import observe_single_positive

CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SIZE, TILE, GRID, SCALE = 96, 32, 3, 3  # 8x8 digit -> 24x24 in a 32x32 tile.
SPLIT_SIZES = {"train": 1600, "validation": 320, "test": 480}
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


def make_mosaics(split: str) -> dict:
    """Generates the whole split as numpy arrays (what the builder stores).

    Returns a dict with `images` (N,96,96,3) uint8, `labels` (N,10) int8,
    `labels_obs` (N,10) int8, `index` (N,) int64, `image_id` (N,) str.
    """
    src = source_digit_indices(split)
    digits, targets = _load_digits()
    by_class = [src[targets[src] == c] for c in range(NUM_CLASSES)]
    n = SPLIT_SIZES[split]
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


# Loading this module under a second name (e.g. importlib tricks) would
# re-register the same tfds name and raise; skip registration in that case.
_REGISTERED = "bridgegap_demo" in tfds.list_builders(with_community_datasets=False)


class BridgegapDemo(tfds.core.GeneratorBasedBuilder, skip_registration=_REGISTERED):
    """Offline multi-label digit mosaics (see module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    # Nothing is downloaded, so there are no URL checksums to look up. Saying so
    # also skips tfds' search for a checksums file next to this module, which
    # needs the optional `importlib_resources` package.
    url_infos = None

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3), encoding_format="png"),
                    "labels": tfds.features.Tensor(shape=(NUM_CLASSES,), dtype=np.int8),
                    "labels_obs": tfds.features.Tensor(shape=(NUM_CLASSES,), dtype=np.int8),
                    "index": tfds.features.Scalar(dtype=np.int64),
                    "image_id": tfds.features.Text(),
                }
            ),
            # Keep yield order in the files, so file order == `index` order.
            disable_shuffling=True,
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Everything is generated locally.
        return {s: self._generate_examples(s) for s in SPLIT_SIZES}

    def _generate_examples(self, split):
        d = make_mosaics(split)
        for i in range(len(d["index"])):
            yield (
                int(d["index"][i]),
                {
                    "image": d["images"][i],
                    "labels": d["labels"][i],
                    "labels_obs": d["labels_obs"][i],
                    "index": d["index"][i],
                    "image_id": str(d["image_id"][i]),
                },
            )


def load_builder(data_dir: str) -> tfds.core.DatasetBuilder:
    """Returns the `bridgegap_demo` builder, preparing it in data_dir if needed."""
    builder = BridgegapDemo(data_dir=data_dir)
    if not builder.is_prepared():
        builder.download_and_prepare()
        print(f"Built the bridgegap_demo dataset in {builder.data_dir}")
    return builder
