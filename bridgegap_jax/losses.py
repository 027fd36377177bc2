"""Assume-negative BCE with the large-loss modifications LL-R, LL-Ct and LL-Cp (SPEC §3).

Pure, jittable functions of arrays; no Flax, no data code. The schedule enters as data: the number
of large losses `k` is an integer array argument, so a new epoch (or the smaller last batch's k)
never changes the compiled program. `num_large_losses` computes k on the host with the reference's
own float64 arithmetic, because `ceil(B*C*(1 - clean_rate))` is sensitive to the last bit of
clean_rate (e.g. 400 * (1 - 0.995) = 2.0000000000000018 -> 3, not 2).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

SCHEMES = ("AN", "LL-R", "LL-Ct", "LL-Cp")

# Per-epoch rate of the schedule, as the BoostLU reference (0.5 / 0.2 / 0.1 percent).
DEFAULT_DELTA_REL = {"AN": 0.0, "LL-R": 0.005, "LL-Ct": 0.002, "LL-Cp": 0.001}

# Which stored value means "unobserved" for each label encoding (SPEC §2).
UNOBSERVED_VALUE = {"single_positive": 0, "partial": -1}


def check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"loss scheme {scheme!r} is not one of {SCHEMES} (config field loss.scheme)")


def clean_rate(epoch: int, delta_rel: float) -> float:
    """clean_rate of 1-based `epoch`: starts at 1.0, minus delta_rel after every epoch (float64)."""
    rate = 1.0
    for _ in range(epoch - 1):
        rate -= delta_rel
    return rate


def num_large_losses(scheme: str, epoch: int, batch_size: int, num_classes: int, delta_rel: float) -> int:
    """k, the number of largest unobserved losses to reject or correct in this batch (0 = none)."""
    check_scheme(scheme)
    if scheme == "AN" or epoch <= 1:
        return 0
    entries = batch_size * num_classes
    if scheme == "LL-Cp":
        return min(entries, math.ceil(entries * delta_rel))
    return min(entries, max(0, math.ceil(entries * (1.0 - clean_rate(epoch, delta_rel)))))


def bce_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Element-wise binary cross-entropy on logits, the numerically stable form PyTorch uses."""
    return jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))


class LossOutput(NamedTuple):
    loss: jax.Array  # scalar: mean over all B*C entries
    selected: jax.Array  # (B, C) bool: the entries rejected (LL-R) or corrected (LL-Ct / LL-Cp)


def large_loss(
    logits: jax.Array,
    observed: jax.Array,
    k: jax.Array,
    *,
    scheme: str,
    unobserved_value: int,
) -> LossOutput:
    """SPEC §3 loss for logits (B, C) and observed labels (B, C).

    `k` (int scalar, traced) comes from `num_large_losses`; k = 0 gives the plain AN loss.
    Selection: u = L on unobserved entries, 0 elsewhere; selected = unobserved and u >= the k-th
    largest u (ties included, so more than k may be selected). Only unobserved entries are ever
    selected: the reference's `u >= thr` alone would also pick observed entries in the degenerate
    case thr == 0 (fewer than k unobserved entries with a non-zero loss); SPEC §5 forbids that.
    """
    check_scheme(scheme)
    logits = logits.astype(jnp.float32)
    target = jnp.maximum(observed, 0).astype(jnp.float32)
    unobserved = observed == unobserved_value
    loss_an = bce_with_logits(logits, target)

    if scheme == "AN":
        selected = jnp.zeros_like(unobserved)
        final = loss_an
    else:
        u = jnp.where(unobserved, loss_an, 0.0).ravel()
        # k-th largest by a full sort: jax.lax.top_k needs a static k, and k changes every epoch.
        descending = -jnp.sort(-u)
        threshold = jnp.where(k > 0, descending[jnp.clip(k - 1, 0, u.size - 1)], jnp.inf)
        selected = unobserved & (loss_an >= threshold)
        if scheme == "LL-R":
            replacement = jnp.zeros_like(loss_an)
        else:  # LL-Ct, LL-Cp: the flipped target, which is 1 on unobserved entries
            replacement = bce_with_logits(logits, 1.0 - target)
        final = jnp.where(selected, replacement, loss_an)

    # Rejected entries stay in the denominator, as in the reference.
    return LossOutput(loss=jnp.mean(final), selected=selected)
