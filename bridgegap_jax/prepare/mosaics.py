"""The built-in datasets' one builder: multi-label mosaics of glyphs, drawn offline and seeded.

Each example is a 96x96 RGB mosaic (a 3x3 grid of 32x32 tiles) holding 1-4 distinct classes, one
glyph each in its own tile: a 24x24 alpha mask of that class, placed at a random offset in the
tile, in a random bright colour on a random dark background, with mild Gaussian noise. What is drawn
is a `MosaicSet`'s: its classes and, per split, its bank of glyphs (the demo's handwritten digits,
prepare/demo.py; the letters of the source task, prepare/letters.py). The splits draw on disjoint
glyph banks and everything is seeded, so a rebuild writes the same records, PNG bytes and labels
(with the same library versions; the ArrayRecord files around them may differ). Written by the
same writer as every prepared dataset, images as PNG.
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Callable

import numpy as np

from bridgegap_jax.prepare.observation import observe_single_positive

IMAGE_SIZE, TILE, GRID, GLYPH = 96, 32, 3, 24  # a 24x24 glyph at an offset of 0..8 px in its tile
MAX_CLASSES = 4  # classes per mosaic: 1..4
_SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2}


@dataclasses.dataclass(frozen=True)
class MosaicSet:
    """What a built-in dataset draws: its classes, glyph banks, split sizes and observed labels."""

    name: str  # the catalog's name
    class_names: tuple[str, ...]
    glyphs: Callable[[str], list[np.ndarray]]  # split -> per class (n, 24, 24) float alpha in [0, 1]
    sizes: dict  # split -> mosaics
    single_positive_train: bool  # train's labels_obs: one observed positive per row, else the full labels
    description: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def make_mosaics(mosaic_set: MosaicSet, split: str, count: int | None = None) -> dict:
    """The whole split as numpy arrays (what the builder stores).

    Returns a dict with `images` (N,96,96,3) uint8, `labels` (N,C) int8, `labels_obs` (N,C) int8,
    `index` (N,) int64, `image_id` (N,) str. The first mosaics are the same for any `count`.
    """
    if split not in _SPLIT_SEEDS:
        raise ValueError(f"Unknown split {split!r}; expected one of {list(_SPLIT_SEEDS)}.")
    bank = mosaic_set.glyphs(split)
    num_classes = mosaic_set.num_classes
    n = mosaic_set.sizes[split] if count is None else count
    rng = np.random.default_rng([_SPLIT_SEEDS[split], 2023])

    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    labels = np.zeros((n, num_classes), np.int8)
    for i in range(n):
        k = rng.integers(1, MAX_CLASSES + 1)
        classes = rng.choice(num_classes, size=k, replace=False)
        tiles = rng.choice(GRID * GRID, size=k, replace=False)
        bg = rng.uniform(0, 60, size=3)  # dark background colour
        img = np.broadcast_to(bg, (IMAGE_SIZE, IMAGE_SIZE, 3)).copy()
        for c, t in zip(classes, tiles):
            alpha = bank[c][rng.choice(len(bank[c]))][..., None]  # (24, 24, 1)
            fg = rng.uniform(140, 255, size=3)  # bright per-glyph colour
            dy, dx = rng.integers(0, TILE - GLYPH + 1, size=2)
            y, x = (t // GRID) * TILE + dy, (t % GRID) * TILE + dx
            patch = img[y : y + GLYPH, x : x + GLYPH]
            img[y : y + GLYPH, x : x + GLYPH] = (1 - alpha) * patch + alpha * fg
            labels[i, c] = 1
        img += rng.normal(0, 8, size=img.shape)  # mild pixel noise
        images[i] = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    if split == "train" and mosaic_set.single_positive_train:
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


def build(mosaic_set: MosaicSet, data_dir: str, overwrite: bool = False) -> str:
    """Writes the set into <data_dir>/bridgegap_<name>/1.0.0 (PNG images); returns the folder."""
    from bridgegap_jax.data import catalog
    from bridgegap_jax.prepare import writer

    splits = {split: make_mosaics(mosaic_set, split) for split in mosaic_set.sizes}
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
            f.writelines(f"{name}\n" for name in mosaic_set.class_names)

    folder, _ = writer.write_dataset(
        data_dir,
        catalog.spec(mosaic_set.name).tfds_name,
        sources,
        num_classes=mosaic_set.num_classes,
        compress_labels=False,
        description=mosaic_set.description,
        max_short_side=None,
        workers=1,
        overwrite=overwrite,
        image_format="png",
        finish=finish,
        quiet=True,
    )
    print(f"built the {mosaic_set.name} dataset in {folder}", flush=True)
    return folder
