"""ResNet in torchvision layout + 1x1-conv class activation map + BoostLU (docs/method.md, "Model").

`CAMClassifier` takes uint8 images (B, H, W, 3), normalises them on the device (the host ships
uint8: a quarter of the bytes and no float work in the input pipeline), runs the trunk, and
returns (logits, cam): `cam` is the raw class activation map (B, H', W', C) and
`logits = mean_hw(boost_lu(cam, alpha))`. Head, BoostLU and pooling run in float32 whatever the
trunk's compute dtype (the head's matmul operands in `head_dtype`). Parameter names follow
torchvision's modules (conv1, bn1, layer1_0, ...), so weight conversion is a plain key map.

Speed options (`batch_norm`, `max_pool`, `stem`, `head_dtype`): defined, built and tested in
`layers.py`; the defaults are the plain Flax layers.

Each model option is an attribute of every module that reads it, of the same name as its config
field (`config.model.FIELD`, `configuration.model` passes them all), and reaches a submodule by that
name (`_passed_down`): adding an option is one field in configs/base.py and the attribute here.
Dtypes are given as dtypes or by name ('float32', 'bfloat16': the config's `DTYPES`). The values are
checked once, by configuration.check.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bridgegap_jax.model import layers

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DTYPES = ("float32", "bfloat16")  # the compute dtypes config.model.dtype and head_dtype may name

# depth -> (block kind, blocks per stage), as torchvision.
RESNET_STAGES = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def boost_lu(cam: jax.Array, alpha: float) -> jax.Array:
    """BoostLU: scale the positive CAM cells by alpha (strict >); alpha = 1 is the identity."""
    return jnp.where(cam > 0, alpha * cam, cam)


def normalize_images(images: jax.Array) -> jax.Array:
    """uint8 RGB in [0, 255] -> ImageNet-normalised float32."""
    mean = jnp.asarray(IMAGENET_MEAN, jnp.float32) * 255.0
    std = jnp.asarray(IMAGENET_STD, jnp.float32) * 255.0
    return (images.astype(jnp.float32) - mean) / std


def _passed_down(module: nn.Module, submodule: type[nn.Module], **values) -> dict:
    """The keyword arguments of `submodule` inside `module`: every attribute the two share, by name
    (an option reaches each module that declares it, and no call lists it), then `values`."""
    shared = {f.name for f in dataclasses.fields(submodule)} & {f.name for f in dataclasses.fields(module)}
    return {name: getattr(module, name) for name in shared - {"parent", "name"}} | values


def _pad(p: int):
    # PyTorch's symmetric padding; 'SAME' would pad (0, 1) on stride-2 convs and shift the outputs.
    return ((p, p), (p, p))


def conv(features: int, kernel: int, stride: int, name: str, dtype, conv_general_dilated=None) -> nn.Conv:
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=_pad(kernel // 2),
        use_bias=False,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
        conv_general_dilated=conv_general_dilated,
        name=name,
    )


def _norm(module, train: bool):
    """layers.norm_act with the module's BatchNorm settings: norm(y, name, residual=None, relu=True)."""

    def norm(y, name: str, residual=None, relu: bool = True):
        return layers.norm_act(
            y,
            train,
            name,
            dtype=jnp.dtype(module.dtype),
            kind=module.batch_norm,
            residual=residual,
            relu=relu,
            group_size=module.bn_group_size,
        )

    return norm


def _torch_bias_init(fan_in: int):
    """PyTorch's default conv bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as the reference's head."""

    def init(key, shape, dtype=jnp.float32):
        bound = 1.0 / fan_in**0.5
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class BasicBlock(nn.Module):
    features: int
    stride: int
    dtype: Any
    batch_norm: str = "flax"
    bn_group_size: int = 0

    @nn.compact
    def __call__(self, x, train: bool):
        norm = _norm(self, train)
        y = conv(self.features, 3, self.stride, "conv1", self.dtype)(x)
        y = norm(y, "bn1")
        y = conv(self.features, 3, 1, "conv2", self.dtype)(y)
        if self.stride != 1 or x.shape[-1] != self.features:
            x = conv(self.features, 1, self.stride, "downsample_conv", self.dtype)(x)
            x = norm(x, "downsample_bn", relu=False)
        return norm(y, "bn2", residual=x)


class Bottleneck(nn.Module):
    """v1.5 bottleneck: the stride sits on the 3x3 conv."""

    features: int
    stride: int
    dtype: Any
    batch_norm: str = "flax"
    bn_group_size: int = 0
    expansion: int = 4

    @nn.compact
    def __call__(self, x, train: bool):
        norm = _norm(self, train)
        out = self.features * self.expansion
        y = conv(self.features, 1, 1, "conv1", self.dtype)(x)
        y = norm(y, "bn1")
        y = conv(self.features, 3, self.stride, "conv2", self.dtype)(y)
        y = norm(y, "bn2")
        y = conv(out, 1, 1, "conv3", self.dtype)(y)
        if self.stride != 1 or x.shape[-1] != out:
            x = conv(out, 1, self.stride, "downsample_conv", self.dtype)(x)
            x = norm(x, "downsample_bn", relu=False)
        return norm(y, "bn3", residual=x)


class ResNetTrunk(nn.Module):
    """torchvision ResNet without avgpool and fc: normalised images -> (B, H/32, W/32, features)."""

    depth: int = 50
    width: int = 64  # channels of the stem; 64 is torchvision, smaller only for tiny demos and tests
    dtype: Any = "float32"  # compute dtype, or its name
    batch_norm: str = "flax"  # speed options: layers.SPEED_OPTIONS
    max_pool: str = "reduce_window"
    stem: str = "conv"
    bn_group_size: int = 0  # > 0: BatchNorm statistics over groups of this many rows (layers.BatchNorm)

    @nn.compact
    def __call__(self, x, train: bool):
        kind, stages = RESNET_STAGES[self.depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        dtype = jnp.dtype(self.dtype)
        x = x.astype(dtype)
        x = conv(self.width, 7, 2, "conv1", dtype, layers.stem_conv_general_dilated(self.stem))(x)
        x = _norm(self, train)(x, "bn1")
        x = layers.stem_max_pool(x, self.max_pool)
        for stage, num_blocks in enumerate(stages):
            for i in range(num_blocks):
                stride = 2 if stage > 0 and i == 0 else 1
                name = f"layer{stage + 1}_{i}"
                options = _passed_down(
                    self, block, features=self.width * 2**stage, stride=stride, dtype=dtype
                )
                x = block(**options, name=name)(x, train)
        return x


class CAMClassifier(nn.Module):
    """uint8 images -> (logits (B, C), raw CAM (B, H', W', C)), both float32."""

    num_classes: int
    depth: int = 50
    width: int = 64
    alpha: float = 5.0  # BoostLU factor; 1.0 is the plain AN / LL model (GAP then linear)
    dtype: Any = "float32"  # trunk compute dtype (or its name); parameters are always float32
    batch_norm: str = "flax"  # speed options: layers.SPEED_OPTIONS
    max_pool: str = "reduce_window"
    stem: str = "conv"
    head_dtype: Any = "float32"  # the head's matmul operands (or their name); float32 sums and output
    bn_group_size: int = 0  # > 0: "ghost" BatchNorm over groups of this many rows (large batches)

    @nn.compact
    def __call__(self, images, train: bool = False):
        trunk = ResNetTrunk(**_passed_down(self, ResNetTrunk), name="trunk")
        features = trunk(normalize_images(images), train)
        promote, head_conv = layers.head_conv_hooks(jnp.dtype(self.head_dtype))
        cam = nn.Conv(
            self.num_classes,
            (1, 1),
            dtype=jnp.float32,
            kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
            bias_init=_torch_bias_init(features.shape[-1]),
            promote_dtype=promote,
            conv_general_dilated=head_conv,
            name="head",
        )(features)
        logits = jnp.mean(boost_lu(cam, self.alpha), axis=(1, 2))
        return logits, cam
