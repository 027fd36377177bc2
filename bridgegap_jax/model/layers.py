"""The model's speed options, each defined here once: its model field, its choices, its layers.

Every option swaps a plain Flax layer for a faster form of the same function (equal up to float
rounding), off by default until a GPU measurement shows it wins. `SPEED_OPTIONS` names each one's
model field (`config.model.FIELD`), its plain choice (the default), its fast one, and the name
under which the benchmark times it (`python -m bridgegap_jax.bench --run=jax-bf16+NAME:128`); the
last section (`norm_act`, `stem_max_pool`, ...) turns a field's value into its layer for models.py.
No option changes a parameter or batch-statistics name or shape, so checkpoints and converted
ImageNet weights load either way. Their tests: tests/test_layers.py.

- `batch_norm='fused'` (`BatchNorm`): nn.BatchNorm's variables and arithmetic (one-pass float32
  statistics E[x], E[x^2]), with the residual add and the ReLU that follow it in the same
  expression (rounded to bf16 once, not after each), and in training a backward written out as two
  passes: one two-output reduction over (dy, x) with the ReLU mask applied, then one elementwise
  pass that gives both dx and the residual's gradient. Autodiff of the three ops leaves XLA to
  find that.
- `max_pool='strided'` (`max_pool_3x3_s2`): the stem's max-pool as the maximum of 9 strided slices;
  its backward is elementwise selects and pads instead of select-and-scatter, with the same
  first-maximum rule.
- `stem='space_to_depth'` (`space_to_depth_conv`): the 7x7 stride-2 stem conv on 3 channels as a
  4x4 stride-1 conv on 2x2 space-to-depth blocks (12 channels), which suits matrix units better.
- `head_dtype='bfloat16'` (`float32_accumulating`): the CAM head's conv operands in bf16, float32
  accumulation and output (the 5,000-class head without rounding its output).

Not a speed option, but the same layer: `BatchNorm(group_size=G)` takes the statistics over groups
of G rows of the batch ("ghost" BatchNorm, model field `bn_group_size`), for large batches that
should normalise as the protocol's batches of 16 do; it changes the result on purpose.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen.dtypes import promote_dtype
from jax import lax


class SpeedOption(NamedTuple):
    field: str  # the model field: config.model.FIELD, CAMClassifier.FIELD
    plain: str  # the default: the plain Flax layer
    fast: str  # the faster form of the same function
    benchmark_name: str  # the benchmark's variant option: jax-bf16+NAME

    @property
    def choices(self) -> tuple[str, str]:
        return self.plain, self.fast


SPEED_OPTIONS = (
    SpeedOption("batch_norm", "flax", "fused", "fused-bn"),
    SpeedOption("max_pool", "reduce_window", "strided", "strided-pool"),
    SpeedOption("stem", "conv", "space_to_depth", "s2d-stem"),
    SpeedOption("head_dtype", "float32", "bfloat16", "bf16-head"),
)
CHOICES = {option.field: option.choices for option in SPEED_OPTIONS}
# configuration.py checks the config against these
BATCH_NORMS, MAX_POOLS, STEMS = CHOICES["batch_norm"], CHOICES["max_pool"], CHOICES["stem"]

REDUCTION_AXES = (0, 1, 2)  # NHWC: statistics per channel over batch and space


# ----------------------------------------------------------------------------------------------
# BatchNorm (+ residual add + ReLU)
# ----------------------------------------------------------------------------------------------
def _accumulation(dtype):
    """float32 for bf16 / float32 inputs (float64 stays float64), as nn.BatchNorm."""
    return jnp.promote_types(dtype, jnp.float32)


def batch_moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-channel mean and biased variance, at least in float32, in one pass over x (as nn.BatchNorm).

    (`group_moments` gives the same per group of rows, for the ghost BatchNorm.)
    """
    x = x.astype(_accumulation(x.dtype))
    mean = jnp.mean(x, REDUCTION_AXES)
    mean_sq = jnp.mean(lax.square(x), REDUCTION_AXES)
    return mean, jnp.maximum(0.0, mean_sq - lax.square(mean))


def _affine(x, mean, mul, bias, residual, relu: bool, dtype):
    """(x - mean) * mul + bias [+ residual] [ReLU] in float32 (the dtype of mean and mul), rounded
    once to `dtype`."""
    y = (x - mean) * mul + bias
    if residual is not None:
        y = y + residual
    if relu:
        y = jnp.maximum(y, 0.0)
    return y.astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def batch_norm_train(x, scale, bias, residual, epsilon: float, relu: bool):
    """Train-mode BatchNorm [+ residual] [+ ReLU] -> (y, batch mean, batch variance).

    The caller must stop gradients through mean and variance (they only feed running averages).
    """
    return _batch_norm_train_fwd(x, scale, bias, residual, epsilon, relu)[0]


def _batch_norm_train_fwd(x, scale, bias, residual, epsilon, relu):
    mean, var = batch_moments(x)
    inv = lax.rsqrt(var + epsilon)
    y = _affine(x, mean, inv * scale, bias, residual, relu, x.dtype)
    return (y, mean, var), (x, scale, mean, inv, y if relu else None, residual)


def _batch_norm_train_bwd(epsilon, relu, saved, cotangents):
    x, scale, mean, inv, y, residual = saved
    g = cotangents[0].astype(mean.dtype)
    if relu:
        g = jnp.where(y > 0, g, 0.0)
    xhat = (x.astype(mean.dtype) - mean) * inv
    n = x.size // x.shape[-1]
    sum_g = jnp.sum(g, REDUCTION_AXES)
    sum_g_xhat = jnp.sum(g * xhat, REDUCTION_AXES)
    dx = (scale * inv) * (g - sum_g / n - xhat * (sum_g_xhat / n))
    dresidual = None if residual is None else g.astype(residual.dtype)
    return dx.astype(x.dtype), sum_g_xhat, sum_g, dresidual


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


# ----------------------------------------------------------------------------------------------
# Ghost BatchNorm: statistics over groups of rows (large batches)
# ----------------------------------------------------------------------------------------------
def group_moments(x: jax.Array, group_size: int) -> tuple[jax.Array, jax.Array]:
    """(groups, C) mean and biased variance of each group of `group_size` rows (the last group may be
    smaller), at least in float32, one pass over x."""
    rows = x.shape[0]
    size = min(group_size, rows)
    groups = -(-rows // size)
    xf = x.astype(_accumulation(x.dtype))
    xf = jnp.pad(xf, ((0, groups * size - rows),) + ((0, 0),) * (x.ndim - 1))  # zeros add nothing to the sums
    xf = xf.reshape((groups, size) + x.shape[1:])
    cells = x.size // (rows * x.shape[-1])
    counts = jnp.asarray([min(size, rows - g * size) * cells for g in range(groups)], xf.dtype)[:, None]
    axes = tuple(range(1, xf.ndim - 1))
    mean = jnp.sum(xf, axes) / counts
    return mean, jnp.maximum(0.0, jnp.sum(lax.square(xf), axes) / counts - lax.square(mean))


class BatchNorm(nn.Module):
    """nn.BatchNorm (feature axis last) with an optional residual add and ReLU fused in.

    Same variables as nn.BatchNorm: params `scale`, `bias`; batch_stats `mean`, `var` (float32),
    updated as `momentum * old + (1 - momentum) * batch` with the biased batch variance, not
    during init. `group_size` G > 0 takes the training statistics over each group of G rows alone
    ("ghost" BatchNorm: groups of 16 normalise exactly as the protocol's batches of 16 at any
    batch), with one running-average update per group, in order, as that many batches of G would
    (in closed form: `running_average`);
    that path uses plain autodiff (statistics are not a bottleneck at the batches it is for).
    """

    use_running_average: bool
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Any = jnp.float32
    group_size: int = 0

    @nn.compact
    def __call__(self, x, residual=None, relu: bool = False):
        features = (x.shape[-1],)
        ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), features)
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), features)
        scale = self.param("scale", nn.initializers.ones, features, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, features, jnp.float32)
        if self.use_running_average:
            mul = lax.rsqrt(ra_var.value + self.epsilon) * scale
            return _affine(x, ra_mean.value, mul, bias, residual, relu, self.dtype)
        if self.group_size > 0:
            mean, var = group_moments(x, self.group_size)
            size = min(self.group_size, x.shape[0])
            per_row = (x.shape[0],) + (1,) * (x.ndim - 2) + features

            def rows(stat):  # (groups, C) -> each row's group's value, broadcastable against x
                return jnp.repeat(stat, size, axis=0)[: x.shape[0]].reshape(per_row)

            y = _affine(
                x, rows(mean), rows(lax.rsqrt(var + self.epsilon) * scale), bias, residual, relu, self.dtype
            )
        else:
            y, mean, var = batch_norm_train(x, scale, bias, residual, self.epsilon, relu)
            mean, var = mean[None], var[None]
        if not self.is_initializing():
            ra_mean.value = running_average(ra_mean.value, lax.stop_gradient(mean), self.momentum)
            ra_var.value = running_average(ra_var.value, lax.stop_gradient(var), self.momentum)
        return y.astype(self.dtype)


def running_average(old: jax.Array, stats: jax.Array, momentum: float) -> jax.Array:
    """`old` after one update `momentum * old + (1 - momentum) * s` per row s of the (groups, C)
    `stats`, in order: in closed form, so a batch of many groups adds one op, not one per group."""
    n = stats.shape[0]
    if n == 1:
        return momentum * old + (1 - momentum) * stats[0]
    weights = (1 - momentum) * momentum ** np.arange(n - 1, -1, -1, dtype=np.float64)
    return np.float32(momentum**n) * old + jnp.tensordot(weights.astype(np.float32), stats, 1)


# ----------------------------------------------------------------------------------------------
# Max-pool 3x3, stride 2, padding 1 (the stem's)
# ----------------------------------------------------------------------------------------------
_OFFSETS = tuple((i, j) for i in range(3) for j in range(3))  # row-major: select-and-scatter's order


def _padded_windows(x):
    """x padded with -inf, and the 9 strided (B, H', W', C) slices whose maximum is the pool."""
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
    ho, wo = (x.shape[1] - 1) // 2 + 1, (x.shape[2] - 1) // 2 + 1
    windows = [
        lax.slice(xp, (0, i, j, 0), (xp.shape[0], i + 2 * ho - 1, j + 2 * wo - 1, xp.shape[3]), (1, 2, 2, 1))
        for i, j in _OFFSETS
    ]
    return xp, windows


def _max_pool(x: jax.Array) -> jax.Array:
    return functools.reduce(jnp.maximum, _padded_windows(x)[1])


max_pool_3x3_s2 = jax.custom_vjp(_max_pool)
max_pool_3x3_s2.__doc__ = (
    "nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1))) on NHWC, same values."
)


def _max_pool_fwd(x):
    out = _max_pool(x)
    return out, (x, out)


def _max_pool_bwd(saved, g):
    """Each output's gradient goes to the first maximum of its window, as select-and-scatter."""
    x, out = saved
    xp, windows = _padded_windows(x)
    taken = jnp.zeros(out.shape, bool)
    dxp = jnp.zeros(xp.shape, g.dtype)
    for (i, j), window in zip(_OFFSETS, windows):
        hit = (window == out) & ~taken
        taken = taken | hit
        rows = (i, xp.shape[1] - i - (2 * out.shape[1] - 1), 1)
        cols = (j, xp.shape[2] - j - (2 * out.shape[2] - 1), 1)
        dxp = dxp + lax.pad(
            jnp.where(hit, g, 0).astype(g.dtype), jnp.zeros((), g.dtype), ((0, 0, 0), rows, cols, (0, 0, 0))
        )
    return (dxp[:, 1:-1, 1:-1, :],)


max_pool_3x3_s2.defvjp(_max_pool_fwd, _max_pool_bwd)


# ----------------------------------------------------------------------------------------------
# Convolution forms (drop-in `conv_general_dilated` for nn.Conv)
# ----------------------------------------------------------------------------------------------
def space_to_depth_conv(
    lhs,
    rhs,
    window_strides,
    padding,
    *,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    precision=None,
    **_,
):
    """A k x k stride-2 NHWC/HWIO conv as a ceil(k/2)-square stride-1 conv on 2x2 blocks.

    out[i] = sum_k xp[2i + k] w[k] = sum_a sum_b z[i + a, b] w[2a + b] with z[j, b] = xp[2j + b]:
    the same products, with the kernel zero-padded to even size and regrouped.
    """
    if (
        tuple(window_strides) != (2, 2)
        or feature_group_count != 1
        or any(d != 1 for d in (lhs_dilation or (1, 1)))
    ):
        raise ValueError("space_to_depth_conv is for plain stride-2 2-D convolutions")
    (kh, kw, cin, cout), (batch, height, width, _) = rhs.shape, lhs.shape
    (top, bottom), (left, right) = padding
    out_h, out_w = (height + top + bottom - kh) // 2 + 1, (width + left + right - kw) // 2 + 1
    a_h, a_w = (kh + 1) // 2, (kw + 1) // 2
    # Pad to exactly 2 * (out + a - 1) rows and columns (the extra rows meet zero kernel taps).
    xp = lax.pad(
        lhs,
        jnp.zeros((), lhs.dtype),
        (
            (0, 0, 0),
            (top, 2 * (out_h + a_h - 1) - height - top, 0),
            (left, 2 * (out_w + a_w - 1) - width - left, 0),
            (0, 0, 0),
        ),
    )
    z = xp.reshape(batch, out_h + a_h - 1, 2, out_w + a_w - 1, 2, cin).transpose(0, 1, 3, 2, 4, 5)
    z = z.reshape(batch, out_h + a_h - 1, out_w + a_w - 1, 4 * cin)
    w = jnp.pad(rhs, ((0, 2 * a_h - kh), (0, 2 * a_w - kw), (0, 0), (0, 0)))
    w = w.reshape(a_h, 2, a_w, 2, cin, cout).transpose(0, 2, 1, 3, 4, 5).reshape(a_h, a_w, 4 * cin, cout)
    return lax.conv_general_dilated(
        z, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision
    )


def float32_accumulating(compute_dtype):
    """nn.Conv hooks: operands cast to `compute_dtype`, float32 accumulation, output and bias.

    Returns (promote_dtype, conv_general_dilated) for nn.Conv's fields of those names.
    """

    def promote(inputs, kernel, bias, dtype=None):
        return inputs.astype(compute_dtype), kernel.astype(compute_dtype), bias

    return promote, functools.partial(lax.conv_general_dilated, preferred_element_type=jnp.float32)


# ----------------------------------------------------------------------------------------------
# Field value -> layer: what models.py builds for each option's value (configuration.check has
# refused any value but the option's choices)
# ----------------------------------------------------------------------------------------------
def norm_act(
    y, train: bool, name: str, dtype, kind: str, residual=None, relu: bool = True, group_size: int = 0
):
    """relu(residual + bn(y)), the residual and the ReLU optional, in the calling module; `kind` is
    the batch_norm option: "fused" is `BatchNorm` (one op with its own backward), "flax" is
    nn.BatchNorm, add and nn.relu. `group_size` G > 0 takes the training statistics over each group
    of G rows (ghost BatchNorm, in `BatchNorm`)."""
    if kind == "fused" or group_size > 0:
        return BatchNorm(
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            dtype=dtype,
            group_size=group_size,
            name=name,
        )(y, residual, relu)
    y = nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
    )(y)
    if residual is not None:
        y = residual + y
    return nn.relu(y) if relu else y


def stem_max_pool(x: jax.Array, kind: str) -> jax.Array:
    """The stem's 3x3 stride-2 max-pool (padding 1, with -inf as PyTorch) in the max_pool option's form."""
    if kind == "strided":
        return max_pool_3x3_s2(x)
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def stem_conv_general_dilated(kind: str):
    """nn.Conv's `conv_general_dilated` for the stem in the stem option's form (None: nn.Conv's own)."""
    return space_to_depth_conv if kind == "space_to_depth" else None


def head_conv_hooks(head_dtype):
    """nn.Conv's (promote_dtype, conv_general_dilated) for the CAM head: Flax's own for float32,
    else operands in `head_dtype` with float32 sums (`float32_accumulating`)."""
    plain = jnp.dtype(head_dtype) == jnp.float32
    return (promote_dtype, None) if plain else float32_accumulating(head_dtype)
