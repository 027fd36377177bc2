"""ResNet in torchvision layout + 1x1-conv class activation map + BoostLU (docs/method.md, "Model").

`CAMClassifier` takes uint8 images (B, H, W, 3), normalises them on the device (the host ships
uint8: a quarter of the bytes and no float work in the input pipeline), runs the trunk, and
returns (logits, cam): `cam` is the raw class activation map (B, H', W', C) and
`logits = mean_hw(boost_lu(cam, alpha))`. Head, BoostLU and pooling run in float32 whatever the
trunk's compute dtype (the head's matmul operands in `head_dtype`). Parameter names follow
torchvision's modules (conv1, bn1, layer1_0, ...), so weight conversion is a plain key map.

Speed options (`layers.py`; defaults are the plain Flax layers): `batch_norm='fused'`,
`max_pool='strided'`, `stem='space_to_depth'`, `head_dtype=bfloat16`. Each computes the same
function up to float rounding and keeps every variable's name and shape.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype

from bridgegap_jax import layers

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# depth -> (block kind, blocks per stage), as torchvision.
RESNET_STAGES = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}

# Speed options: the first of each is the default (plain Flax layers).
BATCH_NORMS = ("flax", "fused")  # fused: BN + residual add + ReLU in one op with its own backward
MAX_POOLS = ("reduce_window", "strided")  # strided: max of 9 strided slices, no select-and-scatter
STEMS = ("conv", "space_to_depth")  # space_to_depth: the 7x7/2 stem conv as 4x4/1 on 2x2 blocks


def boost_lu(cam: jax.Array, alpha: float) -> jax.Array:
    """BoostLU: scale the positive CAM cells by alpha (strict >); alpha = 1 is the identity."""
    return jnp.where(cam > 0, alpha * cam, cam)


def normalize_images(images: jax.Array) -> jax.Array:
    """uint8 RGB in [0, 255] -> ImageNet-normalised float32."""
    mean = jnp.asarray(IMAGENET_MEAN, jnp.float32) * 255.0
    std = jnp.asarray(IMAGENET_STD, jnp.float32) * 255.0
    return (images.astype(jnp.float32) - mean) / std


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


def batch_norm(train: bool, name: str, dtype) -> nn.BatchNorm:
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
    )


def norm_act(
    y, train: bool, name: str, dtype, kind: str, residual=None, relu: bool = True, group_size: int = 0
):
    """relu(residual + bn(y)), the residual and the ReLU optional; `kind` is one of BATCH_NORMS:
    "fused" is one op with its own backward, "flax" is nn.BatchNorm, add and nn.relu. `group_size`
    G > 0 takes the training statistics over each group of G rows (layers.BatchNorm)."""
    if kind == "fused" or group_size > 0:
        norm = layers.BatchNorm(not train, 0.9, 1e-5, dtype, group_size, name=name)
        return norm(y, residual, relu)
    y = batch_norm(train, name, dtype)(y)
    if residual is not None:
        y = residual + y
    return nn.relu(y) if relu else y


def _norm(module, train: bool):
    """norm_act with the module's BatchNorm settings: norm(y, name, residual=None, relu=True)."""

    def norm(y, name: str, residual=None, relu: bool = True):
        return norm_act(y, train, name, module.dtype, module.batch_norm, residual, relu, module.bn_group_size)

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
    dtype: Any = jnp.float32
    batch_norm: str = "flax"  # BATCH_NORMS
    max_pool: str = "reduce_window"  # MAX_POOLS
    stem: str = "conv"  # STEMS
    bn_group_size: int = 0  # > 0: BatchNorm statistics over groups of this many rows (layers.BatchNorm)

    @nn.compact
    def __call__(self, x, train: bool):
        if self.depth not in RESNET_STAGES:
            raise ValueError(f"model.depth={self.depth} is not one of {sorted(RESNET_STAGES)}")
        for field, allowed in (("batch_norm", BATCH_NORMS), ("max_pool", MAX_POOLS), ("stem", STEMS)):
            if getattr(self, field) not in allowed:
                raise ValueError(f"model.{field}={getattr(self, field)!r} is not one of {', '.join(allowed)}")
        kind, stages = RESNET_STAGES[self.depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        x = x.astype(self.dtype)
        stem_conv = layers.space_to_depth_conv if self.stem == "space_to_depth" else None
        x = conv(self.width, 7, 2, "conv1", self.dtype, stem_conv)(x)
        x = _norm(self, train)(x, "bn1")
        if self.max_pool == "strided":
            x = layers.max_pool_3x3_s2(x)
        else:
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=_pad(1))  # pads with -inf, as PyTorch
        for stage, num_blocks in enumerate(stages):
            for i in range(num_blocks):
                stride = 2 if stage > 0 and i == 0 else 1
                name = f"layer{stage + 1}_{i}"
                x = block(
                    self.width * 2**stage, stride, self.dtype, self.batch_norm, self.bn_group_size, name=name
                )(x, train)
        return x


class CAMClassifier(nn.Module):
    """uint8 images -> (logits (B, C), raw CAM (B, H', W', C)), both float32."""

    num_classes: int
    depth: int = 50
    width: int = 64
    alpha: float = 5.0  # BoostLU factor; 1.0 is the plain AN / LL model (GAP then linear)
    dtype: Any = jnp.float32  # trunk compute dtype; parameters are always float32
    batch_norm: str = "flax"
    max_pool: str = "reduce_window"
    stem: str = "conv"
    head_dtype: Any = jnp.float32  # the head's matmul operands; it accumulates and outputs float32
    bn_group_size: int = 0  # > 0: "ghost" BatchNorm over groups of this many rows (large batches)

    @nn.compact
    def __call__(self, images, train: bool = False):
        trunk = ResNetTrunk(
            self.depth,
            self.width,
            self.dtype,
            self.batch_norm,
            self.max_pool,
            self.stem,
            self.bn_group_size,
            name="trunk",
        )
        features = trunk(normalize_images(images), train)
        if jnp.dtype(self.head_dtype) == jnp.float32:
            promote, head_conv, features = promote_dtype, None, features.astype(jnp.float32)
        else:
            promote, head_conv = layers.float32_accumulating(self.head_dtype)
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
