"""torchvision ImageNet ResNet weights -> the Flax trunk of `models.CAMClassifier` (docs/method.md, "Model").

Convert once, load at every run:

    python -m bridgegap_jax.model.pretrained --source=resnet50-0676ba61.pth --out=~/bridgegap_weights/resnet50_v1
    python -m bridgegap_jax.model.pretrained --source=model.safetensors    --out=~/bridgegap_weights/resnet50_v1

The source is a torchvision state dict (`.pth`; torch is imported only to read it) or a
`.safetensors` file, read here with numpy alone (e.g. timm's `resnet50.tv_in1k`, which holds
torchvision's V1 weights under torchvision's names). The output is an orbax checkpoint of the
trunk's params and batch_stats plus `info.json`; training loads it with `load_pretrained_trunk`
(config field `model.pretrained`).

The BoostLU reference builds `torchvision.models.resnet50(pretrained=True)` (ResNet-101 on
OpenImages); torchvision maps `pretrained=True` to IMAGENET1K_V1, so V1 is what reproduces the
paper. V2 (a longer recipe, better ImageNet accuracy) is convertible too; it is another model.

Key map (torchvision -> Flax, all under `trunk/`):
    conv1.weight                         params conv1/kernel, OIHW -> HWIO (transpose 2, 3, 1, 0)
    bn1.weight / .bias                   params bn1/scale, bn1/bias
    bn1.running_mean / .running_var      batch_stats bn1/mean, bn1/var
    layerS.B.convN / .bnN                layerS_B/convN, layerS_B/bnN
    layerS.B.downsample.0 / .1           layerS_B/downsample_conv, layerS_B/downsample_bn
    fc.weight / fc.bias                  dropped (the CAM head is new)
    *.num_batches_tracked                ignored
Every Flax trunk leaf must be filled exactly once with the same shape; any unknown or missing
key is an error that names it. `torch_name` is the inverse map (`python -m bridgegap_jax.export`).
The trunk's width is read from conv1.weight: 64 for torchvision's files, narrower for the trunk of
a narrow run exported with `export.torchvision_state_dict(..., trunk_only=True)`.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from typing import Any, Mapping

import numpy as np

from bridgegap_jax.base.errors import UserError
from bridgegap_jax.base.files import sha256
from bridgegap_jax.model.safetensors_file import read_safetensors

# torchvision's files: the reference's `pretrained=True` is V1.
TORCHVISION_URLS = {
    (50, "V1"): "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    (50, "V2"): "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
    (101, "V1"): "https://download.pytorch.org/models/resnet101-63fe2227.pth",
    (101, "V2"): "https://download.pytorch.org/models/resnet101-cd907fc2.pth",
}
TIMM_NAMES = {50: "timm/resnet50.tv_in1k", 101: "timm/resnet101.tv_in1k"}  # the same V1 weights
VARIABLES_ITEM, INFO_ITEM = "variables", "info"
_IGNORED_SUFFIX = ".num_batches_tracked"


class WeightsNotFoundError(UserError, FileNotFoundError):
    """A weights file or converted trunk that is not there; the message says how to get it."""


class WeightsError(UserError, ValueError):
    """A weights file that is not what it should be; the message names it and what to do."""


def where_to_get(depth: int = 50, out: str = "DIR") -> str:
    """The files that work and the command that converts them (for error messages)."""
    return (
        f"download torchvision's ImageNet ResNet-{depth} weights, {TORCHVISION_URLS[(depth, 'V1')]} "
        "(IMAGENET1K_V1, what the BoostLU reference's pretrained=True "
        f"loads; V2: {TORCHVISION_URLS[(depth, 'V2')]}), "
        f"or model.safetensors of the Hugging Face model {TIMM_NAMES[depth]}, then convert it once with "
        f"`python -m bridgegap_jax.model.pretrained --source=FILE --out={out} --depth={depth}` "
        f"and set --config.model.pretrained={out}; or train from a random initialisation with "
        "--config.model.pretrained=''"
    )


# ----------------------------------------------------------------------------------------------
# Reading the source files
# ----------------------------------------------------------------------------------------------
def read_torch_state_dict(path: str) -> dict[str, np.ndarray]:
    """A torchvision `.pth` state dict as {name: array}. Needs torch (only this path does)."""
    try:
        import torch
    except ImportError:
        raise ImportError(
            f"reading {path} needs torch (pip install torch), which training does not need; "
            "or convert a .safetensors file instead, which needs numpy only"
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch refuses unsafe or broken pickles with several types
        raise WeightsError(
            f"{path} is not a plain torchvision state dict: torch refused to load it with "
            f"weights_only=True ({type(e).__name__}: {' '.join(str(e).split())[:200]}); use "
            "torchvision's own file or a .safetensors file"
        ) from None
    if not isinstance(state, Mapping) or not all(hasattr(v, "numpy") for v in state.values()):
        raise WeightsError(f"{path} is not a plain state dict {{name: tensor}} as torchvision's files are")
    return {
        name: value.detach().cpu().float().numpy() if value.is_floating_point() else value.numpy()
        for name, value in state.items()
    }


def read_source(path: str) -> dict[str, np.ndarray]:
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise WeightsNotFoundError(f"no weights file {path}: " + where_to_get())
    _check_torchvision_hash(path)
    if path.endswith(".safetensors"):
        return read_safetensors(path)
    if path.endswith((".pth", ".pt", ".bin")):
        return read_torch_state_dict(path)
    raise WeightsError(f"{path}: expected a .pth (torchvision) or .safetensors file; " + where_to_get())


def _check_torchvision_hash(path: str) -> None:
    """torchvision's file names carry the first 8 hex digits of the file's sha256: check them."""
    match = re.fullmatch(r"resnet\d+-([0-9a-f]{8})\.pth", os.path.basename(path))
    if match and not sha256(path).startswith(match.group(1)):
        raise WeightsError(
            f"{path} is corrupt or truncated: its sha256 does not start with {match.group(1)}; download it again"
        )


# ----------------------------------------------------------------------------------------------
# The key map
# ----------------------------------------------------------------------------------------------
_BN_LEAVES = {
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}


_DOWNSAMPLE = {"0": "downsample_conv", "1": "downsample_bn"}  # torchvision's downsample Sequential


def flax_path(torch_name: str) -> tuple[str, tuple[str, ...]] | None:
    """torchvision name -> (collection, path under trunk), or None for a dropped fc entry.
    Raises KeyError for a name that is not part of a torchvision ResNet."""
    parts = torch_name.split(".")
    if parts[0] == "fc" and len(parts) == 2:
        return None
    if parts[0].startswith("layer") and len(parts) >= 4:
        module = f"{parts[0]}_{parts[1]}"
        rest = parts[2:]
        if rest[0] == "downsample" and len(rest) == 3:
            rest = [_DOWNSAMPLE.get(rest[1], "?"), rest[2]]
        prefix = (module,)
    else:
        rest, prefix = parts, ()
    if len(rest) == 2:
        layer, leaf = rest
        if (layer.startswith("conv") or layer == "downsample_conv") and leaf == "weight":
            return "params", prefix + (layer, "kernel")
        if (layer.startswith("bn") or layer == "downsample_bn") and leaf in _BN_LEAVES:
            collection, name = _BN_LEAVES[leaf]
            return collection, prefix + (layer, name)
    raise KeyError(torch_name)


def torch_name(collection: str, path: tuple[str, ...]) -> str:
    """The inverse of `flax_path`, from its own tables: (collection, path under trunk) -> torchvision
    name. Checked against `flax_path`, so the two directions cannot drift apart (export uses it)."""
    *modules, leaf = path
    module_names = {flax: f"downsample.{index}" for index, flax in _DOWNSAMPLE.items()}
    leaf_names = {target: name for name, target in _BN_LEAVES.items()}
    leaf_names[("params", "kernel")] = "weight"
    parts = [m.replace("_", ".", 1) if m.startswith("layer") else module_names.get(m, m) for m in modules]
    name = ".".join(parts + [leaf_names.get((collection, leaf), "?")])
    try:
        if flax_path(name) == (collection, tuple(path)):
            return name
    except KeyError:
        pass
    raise KeyError(f"{collection}/trunk/{'/'.join(path)} has no torchvision name")


@functools.lru_cache(maxsize=8)
def expected_trunk(depth: int, width: int = 64) -> dict[str, dict]:
    """{'params': trunk tree, 'batch_stats': trunk tree} of ShapeDtypeStructs, nothing allocated."""
    import jax
    import jax.numpy as jnp

    from bridgegap_jax.model.resnet import ResNetTrunk

    trunk = ResNetTrunk(depth=depth, width=width)
    shapes = jax.eval_shape(lambda: trunk.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))
    return {"params": shapes["params"], "batch_stats": shapes["batch_stats"]}


def _name(key: tuple) -> str:
    return "/".join((key[0], "trunk") + key[1:])


def infer_depth(state_dict: Mapping[str, Any]) -> int:
    """ResNet depth from the number of layer3 blocks and the block kind (conv3 = bottleneck)."""
    from bridgegap_jax.model.resnet import RESNET_STAGES

    blocks = tuple(
        len({k.split(".")[1] for k in state_dict if k.startswith(f"layer{s}.")}) for s in range(1, 5)
    )
    kind = "bottleneck" if any(".conv3." in k for k in state_dict) else "basic"
    for depth, stages in RESNET_STAGES.items():
        if stages == (kind, blocks):
            return depth
    raise WeightsError(
        f"the state dict is not a torchvision ResNet ({kind} blocks per stage {blocks}); " + where_to_get()
    )


def infer_width(state_dict: Mapping[str, Any]) -> int:
    """Channels of the stem: 64 in every torchvision ResNet; narrower for a trunk that `export`
    wrote from a narrow run (convert_torchvision reports a missing conv1.weight)."""
    stem = state_dict.get("conv1.weight")
    return 64 if stem is None else int(np.shape(stem)[0])


def convert_torchvision(state_dict: Mapping[str, np.ndarray], depth: int, width: int = 64) -> dict[str, dict]:
    """torchvision ResNet state dict -> {'params': trunk, 'batch_stats': trunk} (numpy float32).

    Checked: every leaf of the Flax trunk of `depth`/`width` filled exactly once with its shape;
    unknown names, missing names and shape mismatches are errors listing them.
    """
    from flax import traverse_util

    expected = traverse_util.flatten_dict(expected_trunk(depth, width))
    filled: dict[tuple, np.ndarray] = {}
    unknown, mismatched, mismatched_keys = [], [], set()
    for name, value in state_dict.items():
        if name.endswith(_IGNORED_SUFFIX):
            continue
        try:
            target = flax_path(name)
        except KeyError:
            unknown.append(name)
            continue
        if target is None:
            continue
        key = (target[0],) + target[1]
        if key not in expected:
            unknown.append(name)
            continue
        if key in filled:  # two torch names for one leaf: cannot happen with the map above
            raise WeightsError(f"{name} fills {_name(key)} a second time")
        array = np.asarray(value, np.float32)
        if array.ndim == 4:
            array = array.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        if array.shape != expected[key].shape:
            mismatched.append(f"{name} {tuple(np.shape(value))} -> {_name(key)} {expected[key].shape}")
            mismatched_keys.add(key)
            continue
        filled[key] = array
    missing = [_name(k) for k in expected if k not in filled and k not in mismatched_keys]
    problems = []
    if unknown:
        problems.append(
            f"{len(unknown)} unknown key(s): {', '.join(sorted(unknown)[:10])}{' ...' if len(unknown) > 10 else ''}"
        )
    if mismatched:
        problems.append(
            f"{len(mismatched)} shape mismatch(es): "
            f"{'; '.join(mismatched[:5])}{' ...' if len(mismatched) > 5 else ''}"
        )
    if missing:
        problems.append(
            f"{len(missing)} Flax leaf/leaves not filled: "
            f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}"
        )
    if problems:
        raise WeightsError(
            f"these weights are not a torchvision ResNet-{depth} (width {width}): "
            + "; ".join(problems)
            + ". Check --depth; "
            + where_to_get(depth if depth in (50, 101) else 50)
        )
    return traverse_util.unflatten_dict(filled)


# ----------------------------------------------------------------------------------------------
# The converted checkpoint
# ----------------------------------------------------------------------------------------------
def _resolve(path: str) -> str:
    """Absolute local path, or a URL (gs://...) as given: on pods every host must see the checkpoint."""
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def _checkpointer():
    import orbax.checkpoint as ocp

    return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def save_trunk(out: str, trunk: dict, info: dict) -> str:
    """Write the orbax checkpoint (items 'variables' and 'info') to `out`; refuses to overwrite."""
    import orbax.checkpoint as ocp
    from etils import epath
    from flax import traverse_util

    out = _resolve(out)
    if epath.Path(out).exists():
        raise FileExistsError(f"{out} exists; remove it or choose another --out")
    shapes = {k: list(v.shape) for k, v in traverse_util.flatten_dict(trunk, sep="/").items()}
    ckpt = _checkpointer()
    ckpt.save(
        out,
        args=ocp.args.Composite(
            **{
                VARIABLES_ITEM: ocp.args.StandardSave(trunk),
                INFO_ITEM: ocp.args.JsonSave({**info, "shapes": shapes}),
            }
        ),
    )
    return out


def read_info(path: str) -> dict:
    import orbax.checkpoint as ocp
    from etils import epath

    path = _resolve(path)
    if not (epath.Path(path) / VARIABLES_ITEM).exists():
        raise WeightsNotFoundError(
            f"model.pretrained={path}: no converted trunk there (expected {path}/{VARIABLES_ITEM}); to make it, "
            + where_to_get(_guess_depth(path), out=path)
        )
    return _checkpointer().restore(path, args=ocp.args.Composite(**{INFO_ITEM: ocp.args.JsonRestore()}))[
        INFO_ITEM
    ]


def _guess_depth(path: str) -> int:
    return 101 if "101" in os.path.basename(path.rstrip("/")) else 50


def load_pretrained_trunk(path: str, variables: Mapping) -> dict:
    """`variables` ({'params', 'batch_stats'} of a CAMClassifier) with the trunk replaced by the
    converted checkpoint at `path`; the head is kept. Restored onto the shardings of the given
    leaves (so a replicated state stays replicated). The trunk must match exactly."""
    import jax
    import orbax.checkpoint as ocp
    from flax import traverse_util

    path = _resolve(path)
    info = read_info(path)
    current = {c: variables[c]["trunk"] for c in ("params", "batch_stats")}
    want = {k: list(np.shape(v)) for k, v in traverse_util.flatten_dict(current, sep="/").items()}
    have = info["shapes"]
    if want != have:
        diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        raise WeightsError(
            f"model.pretrained={path} holds a ResNet-{info.get('depth')} "
            f"trunk (width {info.get('width')}) that does not "
            f"fit this model ({len(diff)} leaves differ: {', '.join(diff[:5])}{' ...' if len(diff) > 5 else ''}); "
            "convert the weights of the model.depth you train: "
            + where_to_get(info.get("depth") if info.get("depth") in (50, 101) else 50)
        )

    def abstract(x):
        return jax.ShapeDtypeStruct(np.shape(x), np.float32, sharding=getattr(x, "sharding", None))

    target = jax.tree.map(abstract, current)
    restored = _checkpointer().restore(
        path, args=ocp.args.Composite(**{VARIABLES_ITEM: ocp.args.StandardRestore(target)})
    )
    trunk = restored[VARIABLES_ITEM]
    return {**variables, **{c: {**variables[c], "trunk": trunk[c]} for c in ("params", "batch_stats")}}


def convert(source: str, out: str, depth: int | None = None) -> str:
    """Read `source`, map it, save it at `out`; returns the absolute output path."""
    state_dict = read_source(source)
    found = infer_depth(state_dict)
    if depth is not None and depth != found:
        raise WeightsError(
            f"{source} holds ResNet-{found} weights, not ResNet-{depth}; " + where_to_get(depth)
        )
    width = infer_width(state_dict)
    trunk = convert_torchvision(state_dict, found, width)
    dropped = sorted(k for k in state_dict if k.startswith("fc."))
    info = {
        "depth": found,
        "width": width,
        "source": os.path.abspath(os.path.expanduser(source)),
        "source_sha256": sha256(os.path.expanduser(source)),
        "dropped": dropped,
    }
    return save_trunk(out, trunk, info)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bridgegap_jax.model.pretrained",
        description="Convert torchvision ImageNet ResNet weights (.pth or .safetensors) into the Flax trunk "
        "checkpoint that --config.model.pretrained loads.",
    )
    parser.add_argument(
        "--source",
        required=True,
        help="resnet50-0676ba61.pth, resnet101-63fe2227.pth, or a timm *.tv_in1k model.safetensors",
    )
    parser.add_argument("--out", required=True, help="directory to create (orbax checkpoint + info)")
    parser.add_argument(
        "--depth", type=int, choices=(50, 101), default=None, help="expected depth: checked, or inferred"
    )
    args = parser.parse_args(argv)
    try:
        out = convert(args.source, args.out, args.depth)
    except (UserError, FileNotFoundError, FileExistsError, ValueError, ImportError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(f"wrote {out}; train with --config.model.pretrained={out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
