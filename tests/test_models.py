import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_variables

from bridgegap_jax.model.resnet import CAMClassifier, ResNetTrunk, boost_lu
from bridgegap_jax.run import configuration


def count(tree):
    return sum(x.size for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("depth,expected", [(50, 23_508_032), (101, 42_500_160)])
def test_trunk_parameter_count_equals_torchvision(depth, expected):
    # torchvision resnet50/101 parameters minus fc (2048*1000 + 1000); running stats are buffers.
    model = ResNetTrunk(depth=depth)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 448, 448, 3)), train=False))
    assert count(shapes["params"]) == expected


def test_cam_shape_at_448():
    model = CAMClassifier(num_classes=80, depth=50)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 448, 448, 3), jnp.uint8)))
    logits, cam = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 448, 448, 3), jnp.uint8)), variables)
    assert logits.shape == (2, 80) and cam.shape == (2, 14, 14, 80)


@pytest.fixture(scope="module")
def tiny():
    model = CAMClassifier(num_classes=5, depth=18, width=8, alpha=1.0)
    images = jax.random.randint(jax.random.key(1), (3, 64, 64, 3), 0, 256).astype(jnp.uint8)
    return model, random_variables(model, image_size=64), images


def test_alpha_one_is_global_average_pool_then_linear(tiny):
    model, variables, images = tiny
    logits, _ = model.apply(variables, images)
    features = ResNetTrunk(depth=18, width=8).apply(
        {"params": variables["params"]["trunk"], "batch_stats": variables["batch_stats"]["trunk"]},
        (images.astype(jnp.float32) - jnp.asarray([0.485, 0.456, 0.406]) * 255)
        / (jnp.asarray([0.229, 0.224, 0.225]) * 255),
        train=False,
    )
    head = variables["params"]["head"]
    linear = features.mean(axis=(1, 2)) @ head["kernel"][0, 0] + head["bias"]
    np.testing.assert_allclose(logits, linear, atol=1e-5)


@pytest.mark.parametrize("alpha", [1.0, 5.0])
def test_logits_are_the_spatial_mean_of_the_boosted_cam(tiny, alpha):
    model, variables, images = tiny
    logits, cam = model.clone(alpha=alpha).apply(variables, images)
    assert (cam > 0).any() and (cam < 0).any()
    np.testing.assert_allclose(logits, boost_lu(cam, alpha).mean(axis=(1, 2)), rtol=1e-6, atol=1e-6)


def test_boost_lu_gradient_is_alpha_on_positive_cells():
    cam = jnp.asarray([-2.0, -0.5, 0.0, 0.3, 4.0])
    grad = jax.grad(lambda c: boost_lu(c, 5.0).sum())(cam)
    np.testing.assert_array_equal(grad, [1.0, 1.0, 1.0, 5.0, 5.0])  # strict >: zero is not boosted
    np.testing.assert_array_equal(boost_lu(cam, 5.0), [-2.0, -0.5, 0.0, 1.5, 20.0])


@pytest.mark.slow
def test_bfloat16_trunk_keeps_float32_parameters_and_outputs(tiny):
    _, variables, images = tiny
    model = CAMClassifier(num_classes=5, depth=18, width=8, dtype=jnp.bfloat16)
    logits, cam = model.apply(variables, images)
    assert logits.dtype == jnp.float32 and cam.dtype == jnp.float32
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables["params"]))


def test_every_model_field_of_the_config_is_a_classifier_attribute_of_the_same_default():
    """configuration.model passes config.model as it is: a new option is one field in configs/base.py and
    one attribute here (this test names the one that is missing)."""
    config = __import__("configs.base", fromlist=["get_config"]).get_config()
    attributes = {f.name for f in dataclasses.fields(CAMClassifier)} - {"parent", "name", "num_classes"}
    assert set(config.model) - set(configuration.WEIGHT_FIELDS) == attributes
    assert {name: getattr(CAMClassifier, name) for name in attributes} == {
        name: config.model[name] for name in attributes
    }


def test_the_options_of_the_config_reach_every_module_that_reads_them():
    config = __import__("configs.demo", fromlist=["get_config"]).get_config()
    config.model.update(width=8, dtype="bfloat16", batch_norm="fused", bn_group_size=2)
    model = configuration.model(config, 10)
    seen = {}

    def record(call, args, kwargs, context):
        module = context.module
        names = ("width", "dtype", "batch_norm", "bn_group_size", "group_size")
        seen.setdefault(type(module).__name__, set()).add(
            tuple((n, str(getattr(module, n))) for n in names if hasattr(module, n))
        )
        return call(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((2, 32, 32, 3), jnp.uint8)))
    options = (("dtype", "bfloat16"), ("batch_norm", "fused"), ("bn_group_size", "2"))
    assert seen["ResNetTrunk"] == {(("width", "8"), *options)}
    assert seen["BasicBlock"] == {options}
    assert seen["BatchNorm"] == {(("dtype", "bfloat16"), ("group_size", "2"))}
