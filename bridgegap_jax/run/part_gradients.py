"""The noise scale measured in training: the gradients of parts of a batch, and the trainer's monitor.

At a log point the batch is split into P equal parts (run/noise_scale.py has the estimators and
why), and each part's gradient is taken at the parameters before that step's update, in jitted
functions of their own: the train step is not touched, so training is bit-identical with it on or
off, and only log points pay for it (one forward and backward pass of the batch, in parts).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from bridgegap_jax.base import sharding
from bridgegap_jax.run import steps
from bridgegap_jax.run.noise_scale import SmoothedNoiseScale, text


def squared_norm(tree) -> jax.Array:
    return sum(jnp.sum(jnp.square(leaf.astype(jnp.float32))) for leaf in jax.tree.leaves(tree))


def part_norms_fn(objective: Callable, mesh, parts: int) -> Callable:
    """(params, context, batch) -> {"small_sq": mean_p |g_p|^2, "big_sq": |mean_p g_p|^2} (float32
    device scalars), g_p the gradient of `objective(params, context, part)` (a part's mean loss) for
    `parts` equal groups of consecutive rows of `batch` (a tree of arrays sharded along the batch
    axis); `context`: replicated arrays the objective needs. Each device takes the gradients of the
    parts of its own rows, one jitted call per part (one part's program is compiled, not P: a batched
    gradient of the parts runs ~2x slower on CPU, a loop over them inside one program ~5x), and only
    the sums of the gradients and of their squared norms travel between devices."""
    per_device = parts // mesh.size
    whole, rows = PartitionSpec(), PartitionSpec(sharding.DATA_AXIS)

    def add_part(sums, params, context, batch, index):
        def on_device(sums, params, context, local):
            # Marked as differing between devices, so that grad gives this device's own gradient: the
            # gradient of a replicated value would be summed over the devices.
            params = jax.lax.pcast(params, sharding.DATA_AXIS, to="varying")
            size = jax.tree.leaves(local)[0].shape[0] // per_device
            part = jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, index * size, size), local)
            grads = jax.grad(objective)(params, context, part)
            grads, squares = jax.lax.psum((grads, squared_norm(grads)), sharding.DATA_AXIS)
            total, total_squares = sums
            return jax.tree.map(jnp.add, total, grads), total_squares + squares

        specs = (whole, whole, whole, rows)
        return jax.shard_map(on_device, mesh=mesh, in_specs=specs, out_specs=whole)(
            sums, params, context, batch
        )

    add_part = jax.jit(add_part, donate_argnums=0)
    zeros = jax.jit(lambda params: (jax.tree.map(jnp.zeros_like, params), jnp.zeros((), jnp.float32)))
    finish = jax.jit(
        lambda total, squares: {"small_sq": squares / parts, "big_sq": squared_norm(total) / parts**2}
    )

    def norms(params, context, batch):
        sums = zeros(params)
        for index in range(per_device):
            sums = add_part(sums, params, context, batch, index)
        return finish(*sums)

    return norms


def num_parts(configured: int, num_devices: int) -> int:
    """The parts of the batch: one per device on several devices (each takes its own shard's gradient;
    only the sums travel), else `configured` (config.train.noise_scale_parts); 0 = off."""
    if configured == 0:
        return 0
    return num_devices if num_devices > 1 else configured


def model_part_norms_fn(model, loss_fn: steps.LossFn, mesh, parts: int) -> Callable:
    """(state, images, observed, k) -> part_norms_fn's dict for the scheme's loss at the state's
    parameters (BatchNorm in training mode, its running averages not updated); `k`: the large-loss
    counts of one part (scheme.large_loss_counts). Nothing is donated: it runs on the state before
    the step that consumes it, and changes nothing."""

    def objective(params, context, part):
        batch_stats, k = context
        images, observed = part
        loss, _ = steps.batch_loss(
            params,
            batch_stats=batch_stats,
            images=images,
            observed=observed,
            k=k,
            model=model,
            loss_fn=loss_fn,
        )
        return loss

    norms = part_norms_fn(objective, mesh, parts)
    return lambda state, images, observed, k: norms(state.params, (state.batch_stats, k), (images, observed))


class Monitor:
    """The trainer's noise scale: `measure` at a log point (dispatched, not waited for), `add` its
    values when the log point fetches them, `line` / `record` / `state` for the log and checkpoints.
    Only full batches are measured (an epoch's smaller last batch keeps the average as it is)."""

    def __init__(self, parts: int, model, scheme, mesh, batch_size: int, num_classes: int, saved=None):
        """`parts`: num_parts(...), 0 = off; `saved`: the progress record of the checkpoint resumed."""
        self.parts, self.scheme, self.batch_size, self.num_classes = parts, scheme, batch_size, num_classes
        self.norms_fn = model_part_norms_fn(model, scheme.loss, mesh, parts) if parts else None
        self.compiled = False
        self.smoothed = SmoothedNoiseScale(saved)
        self.point = (None, None)  # this log point's own (|G|^2, tr(Sigma)), unsmoothed

    def measure(self, state, batch: dict, epoch: int, rows: int, now: bool) -> dict | None:
        """Called before every step with its state and device `batch` ("image", "labels"): `now` (a log
        point), part_norms_fn's values for the batch as device arrays, else None. The session's first
        full batch also compiles the functions (and waits for them once), before the step that starts
        the clock's pace: compiling is not training time."""
        if not self.parts or rows != self.batch_size or not (now or not self.compiled):
            return None
        k = jnp.asarray(self.scheme.large_loss_counts(epoch, rows // self.parts, self.num_classes))
        norms = self.norms_fn(state, batch["image"], batch["labels"], k)
        if not self.compiled:
            jax.block_until_ready(norms)
            self.compiled = True
        return norms if now else None

    def add(self, norms: dict | None) -> None:
        """What `measure` returned, fetched to the host."""
        self.point = (None, None)
        if norms is not None:
            small, big = float(norms["small_sq"]), float(norms["big_sq"])
            self.point = self.smoothed.update(small, big, self.batch_size // self.parts, self.batch_size)

    def line(self) -> str:
        """' noise 310' for the progress line ('' when off)."""
        return f" noise {text(self.smoothed.value())}" if self.parts else ""

    def record(self) -> dict:
        """The fields of a train record (none when off): noise_scale, the smoothed B_simple (None, written
        null, while unknown), and this log point's own estimates noise_grad_sq (|G|^2) and noise_trace
        (tr(Sigma)), from which any other average can be taken (None where the batch was not measured)."""
        if not self.parts:
            return {}
        grad_sq, trace = self.point
        return {"noise_scale": self.smoothed.value(), "noise_grad_sq": grad_sq, "noise_trace": trace}

    def state(self) -> dict:
        return self.smoothed.state()
