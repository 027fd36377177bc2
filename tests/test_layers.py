"""The speed options (layers.SPEED_OPTIONS) are off by default and compute what the default layers
compute: same variables (names, shapes, init values), same forward and backward up to float32
rounding, same batch-statistics updates."""

import functools
import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bridgegap_jax.model import layers
from bridgegap_jax.model.resnet import Bottleneck, CAMClassifier, ResNetTrunk
from bridgegap_jax.run import configuration, schemes

# "all": every option of the table that is exact to float32 rounding, so that a new one is tested
# here as soon as it is defined; the bf16 head rounds to bf16 (its own test below). The max-pool and
# the stem are also checked on their own below; BatchNorm has its own backward.
OPTIONS = {
    "fused batch_norm": {"batch_norm": "fused"},
    "all": {o.field: o.fast for o in layers.SPEED_OPTIONS if o.field != "head_dtype"},
}


def relative(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def assert_trees_close(got, expected, rtol):
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    errors = {
        jax.tree_util.keystr(p): relative(a, b)
        for (p, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(expected))
    }
    worst = max(errors, key=errors.get)
    assert errors[worst] <= rtol, (worst, errors[worst])


def one_step(model, variables, images, observed):
    """Loss, gradients and updated batch statistics of one train-mode step (LL-R, k = 2)."""
    loss_fn = schemes.create("LL-R").loss

    def objective(params):
        (logits, _), updated = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            images,
            train=True,
            mutable=["batch_stats"],
        )
        return loss_fn(logits, observed, jnp.asarray(2)).loss, updated["batch_stats"]

    (loss, stats), grads = jax.jit(jax.value_and_grad(objective, has_aux=True))(variables["params"])
    return loss, grads, stats


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8))
    observed = np.zeros((4, 10), np.int32)
    observed[np.arange(4), rng.integers(0, 10, 4)] = 1
    return images, jnp.asarray(observed)


@pytest.fixture(scope="module")
def default(batch):
    model = CAMClassifier(num_classes=10, depth=18, width=8)
    variables = model.init(jax.random.key(0), batch[0][:1])
    return model, variables, one_step(model, variables, *batch)


def test_speed_options_are_off_by_default_and_checked():
    """Each option's plain layer is the default of the model and of configs/base.py; configuration.check
    refuses any other value than its choices, naming the field."""
    config = importlib.import_module("configs.base").get_config()
    for option in layers.SPEED_OPTIONS:
        assert getattr(CAMClassifier, option.field) == config.model[option.field] == option.plain
        config.model[option.field] = "nope"
        with pytest.raises(
            configuration.ConfigError,
            match=f"^config.model.{option.field}='nope': must be one of {', '.join(option.choices)}$",
        ):
            configuration.check(config)
        config.model[option.field] = option.plain
    configuration.check(config)


@pytest.mark.parametrize("name", OPTIONS)
@pytest.mark.slow
def test_option_keeps_variables_and_matches_the_default_step(name, batch, default):
    model0, variables0, (loss0, grads0, stats0) = default
    model = CAMClassifier(num_classes=10, depth=18, width=8, **OPTIONS[name])
    variables = model.init(jax.random.key(0), batch[0][:1])
    assert jax.tree.all(
        jax.tree.map(lambda a, b: a.shape == b.shape and bool((a == b).all()), variables, variables0)
    )
    np.testing.assert_allclose(
        model.apply(variables, batch[0])[0], model0.apply(variables0, batch[0])[0], rtol=1e-5, atol=1e-5
    )  # eval mode
    loss, grads, stats = one_step(model, variables, *batch)
    np.testing.assert_allclose(loss, loss0, rtol=1e-6)
    assert_trees_close(grads, grads0, 1e-4)
    assert_trees_close(stats, stats0, 1e-5)


@pytest.mark.slow
def test_options_compute_the_same_function_in_float64():
    """In float64 the rounding is (almost) gone: loss equal to 1e-12; gradients and statistics to 1e-8
    (train-mode BatchNorm over few values amplifies the last bits; float32 leaves 1e-5)."""
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3), jnp.float64)
        results = []
        for options in ({}, OPTIONS["all"]):
            trunk = ResNetTrunk(depth=18, width=8, dtype=jnp.float64, **options)
            variables = jax.tree.map(
                lambda v: v.astype(jnp.float64), trunk.init(jax.random.key(0), x, train=False)
            )

            def objective(params):
                features, updated = trunk.apply(
                    {"params": params, "batch_stats": variables["batch_stats"]},
                    x,
                    train=True,
                    mutable=["batch_stats"],
                )
                return jnp.sum(jnp.sin(features)), updated["batch_stats"]

            results.append(jax.jit(jax.value_and_grad(objective, has_aux=True))(variables["params"]))
    ((got_loss, got_stats), got_grads), ((loss, stats), grads) = results[1], results[0]
    assert got_loss.dtype == jnp.float64
    np.testing.assert_allclose(got_loss, loss, rtol=1e-12)
    assert_trees_close(got_grads, grads, 1e-8)
    assert_trees_close(got_stats, stats, 1e-8)


@pytest.mark.slow
def test_bfloat16_head_keeps_float32_output_and_matches_within_bf16_rounding(batch, default):
    model0, variables0, _ = default
    model = CAMClassifier(num_classes=10, depth=18, width=8, head_dtype="bfloat16")
    logits, cam = model.apply(variables0, batch[0])
    logits0, cam0 = model0.apply(variables0, batch[0])
    assert cam.dtype == jnp.float32 and logits.dtype == jnp.float32
    assert relative(cam, cam0) < 2e-2  # operands rounded to 8 significant bits, sums in float32


@pytest.mark.slow
def test_fused_batch_norm_equals_flax_in_a_bottleneck_with_downsample():
    """Residual add, ReLU and the downsample branch's BN (no ReLU), forward and backward."""
    x = jax.random.normal(jax.random.key(0), (3, 8, 8, 16))
    plain, fused = (
        Bottleneck(features=8, stride=2, dtype=jnp.float32, batch_norm=kind) for kind in ("flax", "fused")
    )
    variables = plain.init(jax.random.key(1), x, train=True)

    def run(block, params, x):
        y, updated = block.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        return jnp.sum(jnp.sin(y)), updated

    for block in (plain, fused):
        gradient = jax.jit(jax.value_and_grad(functools.partial(run, block), argnums=(0, 1), has_aux=True))
        (_, stats), grads = gradient(variables["params"], x)
        if block is plain:
            expected = stats, grads
    assert_trees_close(stats, expected[0], 1e-6)
    assert_trees_close(grads, expected[1], 1e-5)


@pytest.mark.slow
def test_fused_batch_norm_in_bfloat16_stays_within_bf16_rounding():
    x = jax.random.normal(jax.random.key(0), (4, 6, 6, 8)).astype(jnp.bfloat16)
    residual = jax.random.normal(jax.random.key(1), x.shape).astype(jnp.bfloat16)
    scale, bias = jnp.linspace(0.5, 1.5, 8), jnp.linspace(-0.2, 0.2, 8)

    def reference(x, scale, bias, residual):
        x32 = x.astype(jnp.float32)
        mean, var = x32.mean((0, 1, 2)), x32.var((0, 1, 2))
        return jax.nn.relu((x32 - mean) / jnp.sqrt(var + 1e-5) * scale + bias + residual)

    def fused(x, scale, bias, residual):
        return layers.batch_norm_train(x, scale, bias, residual, 1e-5, True)[0]

    y, y_ref = fused(x, scale, bias, residual), reference(x, scale, bias, residual)
    assert y.dtype == jnp.bfloat16
    assert relative(y, y_ref) < 1e-2
    g = jax.grad(lambda *a: jnp.sum(jnp.sin(fused(*a).astype(jnp.float32))), argnums=(0, 1, 2, 3))(
        x, scale, bias, residual
    )
    g_ref = jax.grad(lambda *a: jnp.sum(jnp.sin(reference(*a))), argnums=(0, 1, 2, 3))(
        x, scale, bias, residual
    )
    assert g[0].dtype == g[3].dtype == jnp.bfloat16
    for a, b in zip(g, g_ref):
        assert relative(a, b) < 3e-2


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 7, 9, 2)])
@pytest.mark.slow
def test_strided_max_pool_equals_reduce_window_with_ties(shape):
    """Values exactly equal; gradients too, up to the order of summing an element's windows, ties
    included (few distinct values): it goes to the first maximum of a window, as select-and-scatter."""
    x = jax.random.randint(jax.random.key(0), shape, 0, 3).astype(jnp.float32)
    g = jax.random.normal(jax.random.key(1), ((shape[0], (shape[1] + 1) // 2, (shape[2] + 1) // 2, shape[3])))

    def pool(x):
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

    np.testing.assert_array_equal(layers.max_pool_3x3_s2(x), pool(x))
    np.testing.assert_allclose(
        jax.vjp(layers.max_pool_3x3_s2, x)[1](g)[0], jax.vjp(pool, x)[1](g)[0], rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("size", [32, 33])
def test_space_to_depth_conv_equals_the_strided_conv(size):
    x = jax.random.normal(jax.random.key(0), (2, size, size + 2, 3))
    w = jax.random.normal(jax.random.key(1), (7, 7, 3, 5))
    args = ((2, 2), ((3, 3), (3, 3)))
    expected = jax.lax.conv_general_dilated(x, w, *args, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    got = layers.space_to_depth_conv(x, w, *args)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_running_average_in_closed_form_equals_one_update_per_group():
    rng = np.random.default_rng(0)
    old, stats = rng.normal(size=(5,)).astype(np.float32), rng.normal(size=(64, 5)).astype(np.float32)
    looped = np.float64(old)
    for row in stats:  # what 64 batches of 16 leave, in order
        looped = 0.9 * looped + 0.1 * np.float64(row)
    closed = layers.running_average(jnp.asarray(old), jnp.asarray(stats), 0.9)
    np.testing.assert_allclose(np.asarray(closed), looped, rtol=1e-6, atol=1e-6)
    # one group: the plain update
    np.testing.assert_array_equal(
        layers.running_average(jnp.asarray(old), jnp.asarray(stats[:1]), 0.9), 0.9 * old + 0.1 * stats[0]
    )
