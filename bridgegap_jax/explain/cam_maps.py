"""The CAMs of trained runs, computed on the devices: the maps whose spatial mean is the logit, for
chosen (image, class) pairs and BoostLU alphas (explain.py's comparison, predict.py's figures).

One jitted function per run gathers the requested classes' channels from the (B, H', W', C) CAM
before boosting or upsampling, so 5,000-class models stay cheap; the batch is sharded over the
devices of one host, as in evaluation. The rows of the explanation figures are a seeded random
sample of the matching pairs, drawn in one pass over the split (`RowPicker`).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bridgegap_jax.base import sharding
from bridgegap_jax.model.resnet import CAMClassifier, boost_lu


@dataclasses.dataclass(frozen=True)
class Column:
    """One model of the comparison: a run's parameters at one BoostLU alpha."""

    name: str
    run: str
    alpha: float


# ----------------------------------------------------------------------------------------------
# CAM extraction
# ----------------------------------------------------------------------------------------------
def cam_fn(model: CAMClassifier, alphas: Sequence[float], mesh, upsample_to: int | None = None):
    """jit: (variables, images (B,S,S,3) uint8, class_ids (B,K) int) -> (maps, probs).

    maps (A, B, H', W', K) = boost_lu(cam, alpha) of the K requested classes for each alpha (the map
    whose spatial mean is the logit), bilinearly upsampled to (S, S) if upsample_to = S; probs
    (A, B, K) = sigmoid(mean_hw(boost_lu(cam, alpha))) at the CAM's own resolution.
    """
    alphas = tuple(float(a) for a in alphas)

    def extract(variables, images, class_ids):
        _, cam = model.apply(variables, images, train=False)
        cam = jnp.take_along_axis(cam, class_ids[:, None, None, :], axis=-1)  # gather first: K << C
        maps = jnp.stack([boost_lu(cam, alpha) for alpha in alphas])
        probs = jax.nn.sigmoid(jnp.mean(maps, axis=(2, 3)))
        if upsample_to is not None:
            a, b, _, _, k = maps.shape
            maps = jax.image.resize(maps, (a, b, upsample_to, upsample_to, k), "bilinear")
        return maps, probs

    batch = sharding.batch_sharded(mesh)
    return jax.jit(extract, in_shardings=(sharding.replicated(mesh), batch, batch))


def positive_class_ids(labels: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, C) labels -> class ids (B, K) of the ground-truth positives and their validity (B, K).

    K is rounded up to a power of two so that few shapes are compiled.
    """
    positive = (labels == 1) & mask[:, None]
    k = max(1, int(positive.sum(1).max(initial=0)))
    k = 1 << (k - 1).bit_length()
    order = np.argsort(~positive, axis=1, kind="stable")[:, :k]  # positives first, in class order
    valid = np.take_along_axis(positive, order, axis=1)
    return np.where(valid, order, 0).astype(np.int32), valid


# ----------------------------------------------------------------------------------------------
# Rows of the figures: a seeded random sample of the matching pairs, drawn in one pass
# ----------------------------------------------------------------------------------------------
def _pair_keys(seed: int, index: np.ndarray, class_ids: np.ndarray) -> np.ndarray:
    """A seeded pseudo-random key per (image, class): splitmix64, independent of batching."""
    x = (
        (index.astype(np.uint64) << np.uint64(20))
        + class_ids.astype(np.uint64)
        + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
    )
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class RowPicker:
    """Keeps the `num_rows` matching pairs of smallest key (and their images) while the split streams by."""

    def __init__(self, num_rows: int, seed: int, classes: Sequence[int] = (), image_ids: Sequence[int] = ()):
        self.num_rows, self.seed = num_rows, seed
        self.classes, self.image_ids = set(classes), set(image_ids)
        self.rows: list[tuple[int, int, int, np.ndarray]] = []  # (key, image index, class, image)

    def offer(self, images: np.ndarray, index: np.ndarray, class_ids: np.ndarray, valid: np.ndarray) -> None:
        keep = valid.copy()
        if self.classes:
            keep &= np.isin(class_ids, list(self.classes))
        if self.image_ids:
            keep &= np.isin(index, list(self.image_ids))[:, None]
        if not keep.any():
            return
        rows, cols = np.nonzero(keep)
        keys = _pair_keys(self.seed, index[rows], class_ids[rows, cols])
        for key, r, c in zip(keys, rows, cols):
            self.rows.append((int(key), int(index[r]), int(class_ids[r, c]), images[r]))
        self.rows = sorted(self.rows, key=lambda row: row[0])[: self.num_rows]
        self.rows = [(key, i, c, np.array(image)) for key, i, c, image in self.rows]  # own the images

    def picked(self) -> list[tuple[int, int, np.ndarray]]:
        """(image index, class, image), ordered by class then image."""
        return sorted(((i, c, image) for _, i, c, image in self.rows), key=lambda row: row[:2])


# ----------------------------------------------------------------------------------------------
# One pass over the split
# ----------------------------------------------------------------------------------------------
def extract_split(runs, models, columns, batches, mesh, picker: RowPicker):
    """Every ground-truth-positive pair's map (H'*W' cells) and probability, for every column:
    ({column: (pairs, cells)}, {column: (pairs,)}, images, CAM grid); None for a split without images.
    The picker sees every batch on the way."""
    fns = {
        run.name: cam_fn(models[run.name], [c.alpha for c in columns if c.run == run.name], mesh)
        for run in runs
    }
    maps = {c.name: [] for c in columns}
    probs = {c.name: [] for c in columns}
    num_images, grid = 0, None
    for batch in batches:
        real = batch["index"] >= 0  # the last batch is padded
        class_ids, valid = positive_class_ids(batch["labels"], real)
        picker.offer(batch["image"], batch["index"], class_ids, valid)
        num_images += int(real.sum())
        images, ids = sharding.to_global(mesh, batch["image"]), sharding.to_global(mesh, class_ids)
        for run in runs:
            run_maps, run_probs = (sharding.to_host(x) for x in fns[run.name](run.variables, images, ids))
            run_maps = np.moveaxis(run_maps, -1, 2)[:, valid]  # (A, pairs, H', W')
            grid = run_maps.shape[2:]
            for column, column_maps, column_probs in zip(
                [c for c in columns if c.run == run.name], run_maps, run_probs[:, valid]
            ):
                maps[column.name].append(column_maps.reshape(len(column_maps), -1))
                probs[column.name].append(column_probs)
    if grid is None:  # no batch
        return None
    maps = {name: np.concatenate(parts) for name, parts in maps.items()}
    probs = {name: np.concatenate(parts) for name, parts in probs.items()}
    return maps, probs, num_images, tuple(int(g) for g in grid)


def figure_maps(runs, models, columns, picked, mesh, image_size: int):
    """The picked rows' maps, upsampled to the image, (rows, columns, S, S), and probabilities (rows, columns)."""
    n = len(picked)
    padded = -(-n // mesh.size) * mesh.size
    images = np.zeros((padded, image_size, image_size, 3), np.uint8)
    class_ids = np.zeros((padded, 1), np.int32)
    for r, (_, c, image) in enumerate(picked):
        images[r], class_ids[r, 0] = image, c
    images, class_ids = sharding.to_global(mesh, images), sharding.to_global(mesh, class_ids)
    out_maps, out_probs = {}, {}
    for run in runs:
        alphas = [c.alpha for c in columns if c.run == run.name]
        run_maps, run_probs = cam_fn(models[run.name], alphas, mesh, upsample_to=image_size)(
            run.variables, images, class_ids
        )
        run_maps, run_probs = sharding.to_host(run_maps), sharding.to_host(run_probs)
        for a, column in enumerate(c for c in columns if c.run == run.name):
            out_maps[column.name], out_probs[column.name] = run_maps[a, :n, :, :, 0], run_probs[a, :n, 0]
    return (
        np.stack([out_maps[c.name] for c in columns], 1),
        np.stack([out_probs[c.name] for c in columns], 1),
    )
