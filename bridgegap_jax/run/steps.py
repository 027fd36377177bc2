"""The train state and the jitted train and eval steps; no config, no data code (the optimizer: optimizer.py).

The trainer, the benchmark and the explanation tool all build their steps here, so the benchmark
times exactly the step that training runs. The steps are pure: the state is donated, the number
of large losses `k` enters as an integer array (a new epoch does not recompile), and the loss is
the scheme's jittable `loss(logits, observed, k)`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from bridgegap_jax.base import sharding
from bridgegap_jax.model.resnet import CAMClassifier
from bridgegap_jax.run.losses import LossOutput, bce_with_logits

LossFn = Callable[[jax.Array, jax.Array, jax.Array], LossOutput]  # (logits, observed, k) -> LossOutput


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # batches consumed
    params: Any
    batch_stats: Any
    opt_state: Any
    skipped_steps: jax.Array  # steps whose loss or gradients were not finite (their update was dropped)
    first_skipped_step: jax.Array  # the first of them (1-based), or 0

    def model_vars(self) -> dict:
        return {"params": self.params, "batch_stats": self.batch_stats}


def initial_state(
    model: CAMClassifier, tx: optax.GradientTransformation, image_size: int, seed: int
) -> TrainState:
    variables = model.init(
        jax.random.key(seed), jnp.zeros((1, image_size, image_size, 3), jnp.uint8), train=False
    )
    params, zero = variables["params"], jnp.zeros((), jnp.int32)
    return TrainState(zero, params, variables["batch_stats"], tx.init(params), zero, zero)


def create_state(model, tx, image_size: int, seed: int, mesh) -> TrainState:
    """The initial state, created directly with replicated shardings on the mesh."""
    init = functools.partial(initial_state, model, tx, image_size, seed)
    return jax.jit(init, out_shardings=sharding.replicated(mesh))()


def abstract_state(model, tx, image_size: int, mesh) -> TrainState:
    """Shapes, dtypes and shardings of the state, computed without allocating it (restore target)."""
    shapes = jax.eval_shape(functools.partial(initial_state, model, tx, image_size, 0))
    replicated = sharding.replicated(mesh)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), shapes)


def abstract_model_vars(model, image_size: int, mesh) -> dict:
    """Shapes, dtypes and shardings of params and batch_stats: the restore target of a model alone."""
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, image_size, image_size, 3), jnp.uint8))
    )
    replicated = sharding.replicated(mesh)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), dict(shapes))


def batch_loss(
    params,
    *,
    batch_stats,
    images: jax.Array,
    observed: jax.Array,
    k: jax.Array,
    model: CAMClassifier,
    loss_fn: LossFn,
) -> tuple[jax.Array, tuple[jax.Array, Any]]:
    """(the scheme's loss of a batch, (its selected entries, the updated batch statistics)): the
    objective whose gradient the train step takes (and part_gradients takes per part of the batch)."""
    (logits, _), updated = model.apply(
        {"params": params, "batch_stats": batch_stats}, images, train=True, mutable=["batch_stats"]
    )
    out = loss_fn(logits, observed, k)
    return out.loss, (out.selected, updated["batch_stats"])


def train_step(
    state: TrainState,
    images: jax.Array,
    observed: jax.Array,
    k: jax.Array,
    *,
    model: CAMClassifier,
    tx: optax.GradientTransformation,
    loss_fn: LossFn,
    halt_on_nonfinite: bool = True,
) -> tuple[TrainState, dict, jax.Array]:
    """One step: forward (BoostLU inside the model), the scheme's loss, backward, the optimizer.

    Returns the new state, scalar metrics, and the (B, C) entries the loss selected. A step whose
    loss or gradient norm is not finite changes nothing but the step and skip counters, so a
    non-finite state can never reach a checkpoint; the host reads the counters when it logs or
    saves (no sync per step). With `halt_on_nonfinite` the first such step also freezes every
    later update, so the state stays the last finite one until the host stops the run.
    """

    objective = functools.partial(
        batch_loss,
        batch_stats=state.batch_stats,
        images=images,
        observed=observed,
        k=k,
        model=model,
        loss_fn=loss_fn,
    )
    (loss, (selected, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    apply = finite & (state.skipped_steps == 0) if halt_on_nonfinite else finite
    updated = (optax.apply_updates(state.params, updates), batch_stats, opt_state)
    kept = (state.params, state.batch_stats, state.opt_state)
    params, batch_stats, opt_state = jax.tree.map(lambda new, old: jnp.where(apply, new, old), updated, kept)
    step = state.step + 1
    new_state = state.replace(
        step=step,
        params=params,
        batch_stats=batch_stats,
        opt_state=opt_state,
        skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32),
        first_skipped_step=jnp.where(
            (state.first_skipped_step == 0) & ~finite, step, state.first_skipped_step
        ),
    )
    metrics = {"loss": loss, "num_selected": jnp.sum(selected), "grad_norm": grad_norm}
    return new_state, metrics, selected


def eval_step(
    model_vars: dict, images: jax.Array, labels: jax.Array, *, model: CAMClassifier
) -> tuple[jax.Array, jax.Array]:
    """(probabilities sigmoid(mean(BoostLU(CAM))) (B, C) float32, per-row BCE sums (B,)).

    The BCE is against the full labels (target 1 where label == 1) over the entries that count in
    evaluation (all, or the verified ones where labels hold -1): the validation loss.
    """
    logits, _ = model.apply(model_vars, images, train=False)
    bce = jnp.where(labels >= 0, bce_with_logits(logits, (labels == 1).astype(jnp.float32)), 0.0)
    return jax.nn.sigmoid(logits), jnp.sum(bce, axis=1)


def jit_train_step(model, tx, loss_fn: LossFn, mesh, halt_on_nonfinite: bool = True) -> Callable:
    replicated, batch = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    return jax.jit(
        functools.partial(
            train_step, model=model, tx=tx, loss_fn=loss_fn, halt_on_nonfinite=halt_on_nonfinite
        ),
        in_shardings=(replicated, batch, batch, replicated),
        out_shardings=(replicated, replicated, batch),
        donate_argnums=0,
    )


def jit_eval_step(model, mesh) -> Callable:
    replicated, batch = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    return jax.jit(
        functools.partial(eval_step, model=model),
        in_shardings=(replicated, batch, batch),
        out_shardings=(batch, batch),
    )
