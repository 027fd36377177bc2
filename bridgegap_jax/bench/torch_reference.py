"""The PyTorch reference training step, written from docs/method.md ("Model", "Loss"), for parity tests
and benchmarks.

torch and torchvision are a test/benchmark extra: training never imports this module. It lives
apart from the benchmark's timing (torch_rows.py) so that the parity tests use exactly the step the
benchmark times without pulling in timing code.

The model is the reference's: torchvision's ResNet with avgpool and fc removed, a 1x1 conv head
with bias giving the CAM, BoostLU `where(cam > 0, alpha * cam, cam)`, spatial mean. The loss is
the assume-negative BCE with LL-R / LL-Ct / LL-Cp (k given, ties included, only unobserved entries
selected, mean over all B*C entries). The optimizer is Adam with two parameter groups, the head at
10x the trunk's lr. BatchNorm runs in train mode. `flax_variables` maps the torch model onto the
Flax `CAMClassifier`'s variables (trunk through `pretrained.convert_torchvision`, the same key map
that converts ImageNet weights), so both start from the same numbers.

Known difference, by design of the two libraries: a train-mode BatchNorm updates its running
variance with the unbiased batch variance in PyTorch and the biased one in Flax. It changes
`batch_stats` only (by a factor n/(n-1) on the batch term, n = B*H*W), never the loss, the
gradients or the parameters, because train mode normalises with the biased variance in both.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

from bridgegap_jax.model import pretrained
from bridgegap_jax.model.resnet import IMAGENET_MEAN, IMAGENET_STD

TORCHVISION_RESNETS = {
    18: torchvision.models.resnet18,
    34: torchvision.models.resnet34,
    50: torchvision.models.resnet50,
    101: torchvision.models.resnet101,
    152: torchvision.models.resnet152,
}


class CAMClassifier(torch.nn.Module):
    """torchvision ResNet trunk (no avgpool, no fc) + 1x1 conv head with bias + BoostLU + mean."""

    def __init__(self, depth: int, num_classes: int, alpha: float = 5.0):
        super().__init__()
        trunk = TORCHVISION_RESNETS[depth](weights=None)
        features = trunk.fc.in_features
        del trunk.fc, trunk.avgpool
        self.trunk = trunk  # keeps torchvision's names: trunk.conv1.weight, trunk.layer1.0.bn1.weight, ...
        self.head = torch.nn.Conv2d(features, num_classes, 1)
        self.alpha = alpha

    def features(self, x: torch.Tensor) -> torch.Tensor:
        t = self.trunk
        x = t.maxpool(t.relu(t.bn1(t.conv1(x))))
        return t.layer4(t.layer3(t.layer2(t.layer1(x))))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cam = self.head(self.features(x))
        logits = torch.where(cam > 0, cam * self.alpha, cam).mean(dim=(2, 3))
        return logits, cam


def normalize_uint8(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 NHWC in [0, 255] -> ImageNet-normalised float32 NCHW, the same arithmetic as the Flax model."""
    x = torch.as_tensor(np.asarray(images)).float()
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32) * 255.0
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32) * 255.0
    return ((x - mean) / std).permute(0, 3, 1, 2).contiguous()


def large_loss(
    logits: torch.Tensor, observed: torch.Tensor, k: int, *, scheme: str, unobserved_value: int
) -> torch.Tensor:
    """docs/method.md ("Loss"): assume-negative BCE; from epoch 2 the k largest unobserved losses (ties included)
    are zeroed (LL-R) or replaced by the flipped-target loss (LL-Ct, LL-Cp); mean over B*C."""
    logits = logits.float()
    target = observed.clamp(min=0).float()
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if scheme == "AN" or k <= 0:
        return loss.mean()
    unobserved = observed == unobserved_value
    u = torch.where(unobserved, loss.detach(), torch.zeros_like(loss))
    threshold = torch.topk(u.flatten(), k).values[-1]
    selected = unobserved & (u >= threshold)
    if scheme == "LL-R":
        final = torch.where(selected, torch.zeros_like(loss), loss)
    elif scheme in ("LL-Ct", "LL-Cp"):
        final = torch.where(
            selected, F.binary_cross_entropy_with_logits(logits, 1.0 - target, reduction="none"), loss
        )
    else:
        raise ValueError(f"loss scheme {scheme!r} is not one of AN, LL-R, LL-Ct, LL-Cp")
    return final.mean()


def make_optimizer(
    model: CAMClassifier, lr: float = 1e-5, head_lr_mult: float = 10.0, fused: bool | None = None
) -> torch.optim.Adam:
    """Adam (0.9, 0.999, eps 1e-8, no weight decay); the head at head_lr_mult x lr, as the reference."""
    groups = [
        {"params": list(model.trunk.parameters()), "lr": lr},
        {"params": list(model.head.parameters()), "lr": lr * head_lr_mult},
    ]
    return torch.optim.Adam(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=fused)


def train_step(
    model,
    optimizer,
    images: torch.Tensor,
    observed: torch.Tensor,
    k: int,
    *,
    scheme: str,
    unobserved_value: int,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """One reference step in train mode: zero_grad, forward, loss, backward, Adam. Returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(
        images.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
    ):
        logits, _ = model(images)
    loss = large_loss(logits, observed, k, scheme=scheme, unobserved_value=unobserved_value)
    loss.backward()
    optimizer.step()
    return loss.detach()


def flax_tree(named: Iterable[tuple[str, torch.Tensor]], depth: int) -> dict:
    """{torch name: tensor} of a `CAMClassifier` (parameters, buffers, or gradients keyed like
    parameters) -> the Flax variables tree {'params': {'trunk', 'head'}, 'batch_stats': {'trunk'}}.
    Batch statistics missing from `named` (e.g. for gradients) are left out of the result."""
    arrays = {
        name: value.detach().float().cpu().numpy().copy() for name, value in named
    }  # no views of torch memory
    trunk_sd = {name[len("trunk.") :]: a for name, a in arrays.items() if name.startswith("trunk.")}
    others = sorted(set(arrays) - {"trunk." + n for n in trunk_sd} - {"head.weight", "head.bias"})
    if others:
        raise KeyError(f"not a CAMClassifier tensor: {others}")
    has_stats = any(n.endswith("running_mean") for n in trunk_sd)
    if not has_stats:  # gradients: placeholder statistics, so that the key map stays fully checked
        for name in list(trunk_sd):
            if pretrained.flax_path(name)[1][-1] == "scale":  # a BatchNorm weight
                base = name[: -len("weight")]
                trunk_sd[base + "running_mean"] = trunk_sd[base + "running_var"] = np.zeros_like(
                    trunk_sd[name]
                )
    trunk = pretrained.convert_torchvision(trunk_sd, depth)
    head = {"kernel": arrays["head.weight"].transpose(2, 3, 1, 0), "bias": arrays["head.bias"]}
    variables = {"params": {"trunk": trunk["params"], "head": head}}
    if has_stats:
        variables["batch_stats"] = {"trunk": trunk["batch_stats"]}
    return variables


def flax_variables(model: CAMClassifier, depth: int) -> dict:
    """The Flax `CAMClassifier` variables holding this torch model's weights and running statistics."""
    return flax_tree(model.state_dict().items(), depth)


def flax_grads(model: CAMClassifier, depth: int) -> dict:
    """The torch gradients (after backward) in the Flax params layout."""
    return flax_tree(((n, p.grad) for n, p in model.named_parameters()), depth)["params"]
