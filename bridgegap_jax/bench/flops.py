"""Analytic FLOPs of the model: convolution and matmul MACs read off the traced forward pass.

Nothing is compiled or run: the model is traced with abstract shapes (`jax.make_jaxpr` on
`jax.eval_shape`d variables), and every `conv_general_dilated` and `dot_general` contributes its
multiply-accumulates. Elementwise work (BatchNorm, ReLU, adds) is left out, as usual for model
FLOPs. A FLOP is half a MAC; a training step counts 3x the forward (forward, input gradients,
weight gradients), the convention of model-FLOPs utilisation. XLA's own GPU cost analysis is not
used because it leaves out the cuDNN convolutions.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.extend import core


def _conv_macs(eqn) -> int:
    out = eqn.outvars[0].aval.shape
    rhs = eqn.invars[1].aval.shape
    out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
    # Each output element sums over the kernel window and the (grouped) input features.
    return math.prod(out) * (math.prod(rhs) // out_features)


def _dot_macs(eqn) -> int:
    lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
    (_, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
    rhs_free = [d for i, d in enumerate(rhs) if i not in rhs_contract and i not in rhs_batch]
    return math.prod(lhs) * math.prod(rhs_free)


def _sub_jaxprs(value) -> list:
    if isinstance(value, core.ClosedJaxpr):
        return [value.jaxpr]
    if isinstance(value, core.Jaxpr):
        return [value]
    if isinstance(value, (tuple, list)):
        return [j for v in value for j in _sub_jaxprs(v)]
    return []


def jaxpr_macs(jaxpr) -> int:
    """Conv and matmul MACs of a jaxpr, nested calls included (a scan's body times its length)."""
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            total += _conv_macs(eqn)
        elif name == "dot_general":
            total += _dot_macs(eqn)
        repeat = eqn.params.get("length", 1) if name == "scan" else 1
        for sub in (j for value in eqn.params.values() for j in _sub_jaxprs(value)):
            total += repeat * jaxpr_macs(sub)
    return total


def macs(fn: Callable, *args: Any) -> int:
    """MACs of fn(*args); args may be jax.ShapeDtypeStruct trees (nothing is allocated)."""
    return jaxpr_macs(jax.make_jaxpr(fn)(*args).jaxpr)


def model_flops(model, image_size: int) -> dict[str, float]:
    """FLOPs per image of a CAMClassifier at image_size: 'forward' (eval) and 'train' (3x)."""
    images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.uint8)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)
    forward = 2.0 * macs(lambda v, x: model.apply(v, x, train=False), variables, images)
    return {"forward": forward, "train": 3.0 * forward}
