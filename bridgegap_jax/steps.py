"""Model, optimizer, train state, and the jitted train and eval steps; no config, no data code.

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

from bridgegap_jax import sharding
from bridgegap_jax.losses import LossOutput
from bridgegap_jax.models import CAMClassifier

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
LossFn = Callable[[jax.Array, jax.Array, jax.Array], LossOutput]  # (logits, observed, k) -> LossOutput


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any

    def model_vars(self) -> dict:
        return {"params": self.params, "batch_stats": self.batch_stats}


def make_model(num_classes: int, *, depth: int, width: int = 64, alpha: float = 5.0,
               dtype: str = "float32", batch_norm: str = "flax", max_pool: str = "reduce_window",
               stem: str = "conv", head_dtype: str = "float32") -> CAMClassifier:
    """The CAM classifier; `dtype` (float32 | bfloat16) is the trunk's compute dtype.

    The speed options (`batch_norm`, `max_pool`, `stem`, `head_dtype`; models.py) default to the
    plain Flax layers and change the result by float rounding only; the trunk checks their values.
    """
    for name, value in (("dtype", dtype), ("head_dtype", head_dtype)):
        if value not in DTYPES:
            raise ValueError(f"config.model.{name}={value!r} is not one of {', '.join(DTYPES)}")
    return CAMClassifier(num_classes=num_classes, depth=depth, width=width, alpha=alpha, dtype=DTYPES[dtype],
                         batch_norm=batch_norm, max_pool=max_pool, stem=stem, head_dtype=DTYPES[head_dtype])


def make_optimizer(lr: float, head_lr_mult: float) -> optax.GradientTransformation:
    """Adam without weight decay; the CAM head at head_lr_mult x lr, as the reference's 10x."""

    def adam(rate):
        return optax.adam(rate, b1=0.9, b2=0.999, eps=1e-8)

    def labels(params):
        return {name: jax.tree.map(lambda _: "head" if name == "head" else "trunk", sub) for name, sub in params.items()}

    return optax.multi_transform({"trunk": adam(lr), "head": adam(lr * head_lr_mult)}, labels)


def initial_state(model: CAMClassifier, tx: optax.GradientTransformation, image_size: int, seed: int) -> TrainState:
    variables = model.init(jax.random.key(seed), jnp.zeros((1, image_size, image_size, 3), jnp.uint8), train=False)
    params = variables["params"]
    return TrainState(jnp.zeros((), jnp.int32), params, variables["batch_stats"], tx.init(params))


def create_state(model, tx, image_size: int, seed: int, mesh) -> TrainState:
    """The initial state, created directly with replicated shardings on the mesh."""
    init = functools.partial(initial_state, model, tx, image_size, seed)
    return jax.jit(init, out_shardings=sharding.replicated(mesh))()


def abstract_state(model, tx, image_size: int, mesh) -> TrainState:
    """Shapes, dtypes and shardings of the state, computed without allocating it (restore target)."""
    shapes = jax.eval_shape(functools.partial(initial_state, model, tx, image_size, 0))
    replicated = sharding.replicated(mesh)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), shapes)


def train_step(state: TrainState, images: jax.Array, observed: jax.Array, k: jax.Array, *,
               model: CAMClassifier, tx: optax.GradientTransformation,
               loss_fn: LossFn) -> tuple[TrainState, dict, jax.Array]:
    """One step: forward (BoostLU inside the model), the scheme's loss, backward, Adam.

    Returns the new state, scalar metrics, and the (B, C) entries the loss selected.
    """

    def objective(params):
        (logits, _), updated = model.apply(
            {"params": params, "batch_stats": state.batch_stats}, images, train=True, mutable=["batch_stats"]
        )
        out = loss_fn(logits, observed, k)
        return out.loss, (out.selected, updated["batch_stats"])

    (loss, (selected, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats,
        opt_state=opt_state,
    )
    metrics = {"loss": loss, "num_selected": jnp.sum(selected), "grad_norm": optax.global_norm(grads)}
    return new_state, metrics, selected


def eval_step(model_vars: dict, images: jax.Array, *, model: CAMClassifier) -> jax.Array:
    """Probabilities sigmoid(mean(BoostLU(CAM))), float32 (B, C)."""
    logits, _ = model.apply(model_vars, images, train=False)
    return jax.nn.sigmoid(logits)


def jit_train_step(model, tx, loss_fn: LossFn, mesh) -> Callable:
    replicated, batch = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    return jax.jit(
        functools.partial(train_step, model=model, tx=tx, loss_fn=loss_fn),
        in_shardings=(replicated, batch, batch, replicated),
        out_shardings=(replicated, replicated, batch),
        donate_argnums=0,
    )


def jit_eval_step(model, mesh) -> Callable:
    replicated, batch = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    return jax.jit(functools.partial(eval_step, model=model), in_shardings=(replicated, batch), out_shardings=batch)
