"""The arithmetic every loss scheme shares: per-entry BCE, the large-loss selection, the schedule.

Pure, jittable functions of arrays (no Flax, no data code); the schemes in `schemes/` compose them.
Selection ranks the unobserved entries' losses and takes the k largest, ties included, over the
batch or over each group of G rows; `k` is an integer array argument computed on the host
(`large_loss_count`), so a new epoch never changes the compiled program. See docs/method.md, "Loss".
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp


class LossOutput(NamedTuple):
    loss: jax.Array  # scalar: mean over all B*C entries
    selected: jax.Array  # (B, C) bool: the entries a scheme rejected or corrected


def bce_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Element-wise binary cross-entropy on logits, the numerically stable form PyTorch uses."""
    return jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def assume_negative(logits: jax.Array, observed: jax.Array, unobserved_value: int):
    """(per-entry AN loss, flipped-target loss, unobserved mask): the target is max(observed, 0)."""
    logits = logits.astype(jnp.float32)
    target = jnp.maximum(observed, 0).astype(jnp.float32)
    return (
        bce_with_logits(logits, target),
        bce_with_logits(logits, 1.0 - target),
        observed == unobserved_value,
    )


def select_large_losses(
    loss: jax.Array, unobserved: jax.Array, k: jax.Array, group_size: int = 0
) -> jax.Array:
    """(B, C) bool: in each group of rows, the unobserved entries whose loss is >= the group's k-th
    largest unobserved loss (k = 0: none).

    `group_size` 0 ranks the whole batch at once (the protocol); G > 0 ranks each group of G rows
    on its own (the last group may be smaller), so a large batch selects exactly what batches of G
    would. `k` holds one count per group (a scalar when there is one group). Ties at a threshold
    are all selected, so more than k may be. Only unobserved entries are ever selected: the
    reference's `u >= thr` alone would also pick observed entries in the degenerate case thr == 0
    (fewer than k unobserved entries with a non-zero loss), and verified labels must never be touched.
    """
    rows, classes = loss.shape
    group = rows if group_size <= 0 else min(group_size, rows)
    groups = -(-rows // group)
    pad = groups * group - rows  # padded rows are never unobserved, so never selected
    u = jnp.where(unobserved, loss, 0.0)
    u = jnp.pad(u, ((0, pad), (0, 0))).reshape(groups, group * classes)
    # The k-th largest by a full sort: jax.lax.top_k needs a static k, and k changes every epoch.
    descending = -jnp.sort(-u, axis=1)
    k = jnp.broadcast_to(jnp.atleast_1d(k), (groups,))
    kth = jnp.take_along_axis(descending, jnp.clip(k - 1, 0, group * classes - 1)[:, None], axis=1)[:, 0]
    threshold = jnp.where(k > 0, kth, jnp.inf)
    return unobserved & (loss >= jnp.repeat(threshold, group)[:rows, None])


def group_sizes(rows: int, group_size: int = 0) -> list[int]:
    """The row count of each selection group of a batch of `rows` rows (see select_large_losses)."""
    if group_size <= 0 or group_size >= rows:
        return [rows]
    return [group_size] * (rows // group_size) + ([rows % group_size] if rows % group_size else [])


def clean_rate(epoch: int, delta_rel: float) -> float:
    """clean_rate of 1-based `epoch`: starts at 1.0, minus delta_rel after every epoch (float64).

    Decremented step by step, as the reference does, because `ceil(B*C*(1 - clean_rate))` is
    sensitive to the last bit: 400 * (1 - 0.995) = 2.0000000000000018 gives k = 3, not 2.
    """
    rate = 1.0
    for _ in range(epoch - 1):
        rate -= delta_rel
    return rate


def large_loss_count(entries: int, fraction: float) -> int:
    """k = ceil(entries * fraction), clipped to [0, entries]."""
    return min(entries, max(0, math.ceil(entries * fraction)))
