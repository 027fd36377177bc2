"""The optimizer and its learning-rate schedule: the protocol's Adam, and LAMB / LARS for large batches.

Plain values in, no config: configuration.optimizer is where config.train becomes an Optimizer (the
benchmark and the tests call these builders directly). The schedule's step count lives in the
optimizer state, so a resumed run continues it exactly.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import optax

LR_SCALINGS = ("none", "sqrt", "linear")
LR_DECAYS = ("none", "cosine")
REFERENCE_BATCH = 16  # the protocol's batch: the learning rates of the configs are for it


def lr_schedule(
    lr: float,
    *,
    batch_size: int = REFERENCE_BATCH,
    scaling: str = "none",
    warmup_steps: int = 0,
    decay_steps: int = 0,
) -> optax.Schedule:
    """The trunk's learning rate by step: `lr` (the protocol's, for a batch of 16) scaled to the batch
    (none | sqrt | linear), reached by a linear warm-up over `warmup_steps`, then constant, or
    cosine-decayed to 0 at `decay_steps` when that is > 0. The protocol is none / 0 / 0: constant lr."""
    peak = (
        lr
        * {
            "none": 1.0,
            "sqrt": (batch_size / REFERENCE_BATCH) ** 0.5,
            "linear": batch_size / REFERENCE_BATCH,
        }[scaling]
    )
    if decay_steps > 0:
        return optax.warmup_cosine_decay_schedule(
            0.0, peak, warmup_steps, max(decay_steps, warmup_steps + 1), 0.0
        )
    if warmup_steps > 0:
        return optax.join_schedules(
            [optax.linear_schedule(0.0, peak, warmup_steps), optax.constant_schedule(peak)], [warmup_steps]
        )
    return optax.constant_schedule(peak)


OPTIMIZERS = ("adam", "lamb", "lars")
# None in config.train.weight_decay: the optimizer's usual value. Adam: none (the protocol). LAMB:
# 0.01 (You et al. 2020). LARS: 1e-4, the usual ImageNet ResNet-50 weight decay (Goyal et al. 2017).
# Decoupled: added to the update, on kernels only.
WEIGHT_DECAY = {"adam": 0.0, "lamb": 0.01, "lars": 1e-4}
LARS_TRUST_COEFFICIENT = 0.001  # eta of You et al. 2017: each kernel moves by ~ lr x eta x |w| / |g| x g
LARS_MOMENTUM = 0.9


def is_kernel(params):
    """True for convolution kernels (trunk and head), False for BatchNorm scales and biases and the
    head's bias: the layer-wise optimizers leave those out of weight decay and the trust ratio, as
    both papers' implementations do (a norm ratio means little for a vector of offsets)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key == "kernel", params)


def make_optimizer(
    lr: float | optax.Schedule,
    head_lr_mult: float,
    optimizer: str = "adam",
    weight_decay: float | None = None,
) -> optax.GradientTransformation:
    """`optimizer` (adam | lamb | lars) at the schedule `lr`, the CAM head at head_lr_mult x lr (the
    reference's 10x). Adam is the protocol's, without weight decay. LAMB (You et al. 2020) is Adam
    (the protocol's betas, LAMB's eps 1e-6) whose update of each kernel, weight decay added, is
    rescaled to |w| / |update|; LARS (You et al. 2017) is momentum-0.9 SGD whose step on each kernel,
    weight decay added, is rescaled by the trust ratio eta |w| / |g| (eta 0.001). Both step the
    BatchNorm parameters and biases as plain Adam / momentum SGD at the same lr. The step count of
    a schedule lives in the optimizer state, so a resumed run continues it exactly."""
    decay = WEIGHT_DECAY[optimizer] if weight_decay is None else weight_decay
    schedule = lr if callable(lr) else optax.constant_schedule(lr)

    def adam(rate):
        return optax.adam(rate, b1=0.9, b2=0.999, eps=1e-8)

    def lamb(rate):
        return optax.chain(
            optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-6),
            optax.add_decayed_weights(decay, mask=is_kernel),
            optax.masked(optax.scale_by_trust_ratio(), is_kernel),
            optax.scale_by_learning_rate(rate),
        )

    def lars(rate):
        return optax.lars(
            rate,
            weight_decay=decay,
            weight_decay_mask=is_kernel,
            trust_coefficient=LARS_TRUST_COEFFICIENT,
            trust_ratio_mask=is_kernel,
            momentum=LARS_MOMENTUM,
        )

    build = {"adam": adam, "lamb": lamb, "lars": lars}[optimizer]

    def labels(params):
        return {
            name: jax.tree.map(lambda _: "head" if name == "head" else "trunk", sub)
            for name, sub in params.items()
        }

    head = lambda count: head_lr_mult * schedule(count)  # noqa: E731
    return optax.multi_transform({"trunk": build(schedule), "head": build(head)}, labels)


class Optimizer(NamedTuple):
    """The optimizer of a run, and the trunk's learning rate by step (logged; the head's is head_lr_mult x)."""

    tx: optax.GradientTransformation
    lr: optax.Schedule
