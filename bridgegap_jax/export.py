r"""A trained run's best checkpoint -> one .safetensors file that PyTorch's torchvision ResNet loads.

    python -m bridgegap_jax.export --workdir=runs/NAME --out=model.safetensors

The file holds the trunk under torchvision's names and layouts (conv kernels OIHW), the exact
inverse of `pretrained`'s key map (`pretrained.torch_name`), with every BatchNorm's
`num_batches_tracked` (0: PyTorch reads it only with momentum=None) so that
`resnet.load_state_dict(..., strict=True)` takes it; the CAM head as a 1x1 convolution,
`head.weight` (C, F, 1, 1) and `head.bias` (C,); and, in the metadata (strings), what PyTorch needs
to compute the same probabilities: alpha, class_names (JSON), image_size, resize, mean and std
(JSON, of RGB in [0, 1]), depth, width. docs/own_data.md has the PyTorch code.

    python -m bridgegap_jax.export --workdir=runs/NAME --out=trunk.safetensors --trunk_only

`--trunk_only` writes the trunk alone, as torchvision's ImageNet files hold it (without the
classifier), for `python -m bridgegap_jax.model.pretrained` to convert into the start of another run:
this is how a trunk trained here becomes a pretrained trunk, exactly as torchvision's file does.
torchvision builds only width-64 ResNets, so a whole-model export of a narrower run is refused;
a trunk-only export of any width is allowed, because `pretrained` reads any width.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from flax import traverse_util

from bridgegap_jax.base import sharding
from bridgegap_jax.base.errors import ArgumentParser, UserError
from bridgegap_jax.model import pretrained
from bridgegap_jax.model.resnet import IMAGENET_MEAN, IMAGENET_STD
from bridgegap_jax.model.safetensors_file import write_safetensors
from bridgegap_jax.run import trained_run

__all__ = ["torchvision_state_dict", "write_safetensors", "export"]
TORCHVISION_WIDTH = 64
TRUNK_METADATA = ("depth", "width", "dataset", "run", "best_step", "trained_dtype")


class ExportError(UserError, ValueError):
    """A run that cannot be exported as asked; the message says why."""


def torchvision_state_dict(variables: dict, *, trunk_only: bool = False) -> dict[str, np.ndarray]:
    """{'params', 'batch_stats'} of a CAMClassifier (numpy or jax arrays, any width and depth) ->
    {torchvision name: float32 array} (num_batches_tracked int64), sorted by name; the head as
    head.weight / head.bias unless `trunk_only`."""
    tensors = {}
    for collection in ("params", "batch_stats"):
        for path, value in traverse_util.flatten_dict(variables[collection]["trunk"]).items():
            name = pretrained.torch_name(collection, tuple(path))
            array = np.asarray(value, np.float32)
            tensors[name] = array.transpose(3, 2, 0, 1) if array.ndim == 4 else array  # HWIO -> OIHW
            if name.endswith(".running_var"):
                tensors[name.removesuffix("running_var") + "num_batches_tracked"] = np.zeros((), np.int64)
    if not trunk_only:
        head = variables["params"]["head"]
        tensors["head.weight"] = np.asarray(head["kernel"], np.float32).transpose(3, 2, 0, 1)
        tensors["head.bias"] = np.asarray(head["bias"], np.float32)
    return {name: np.ascontiguousarray(tensors[name]) for name in sorted(tensors)}


def metadata(run: trained_run.Run, class_names) -> dict[str, str]:
    config = run.config
    return {
        "format": "bridgegap_jax CAMClassifier: torchvision ResNet trunk, head = 1x1 conv (CAM), BoostLU "
        "where(cam > 0, alpha * cam, cam), global average pooling, sigmoid",
        "depth": str(config.model.depth),
        "width": str(config.model.width),
        "alpha": repr(float(config.model.alpha)),
        "num_classes": str(len(class_names)),
        "class_names": json.dumps(list(class_names)),
        "image_size": str(config.data.image_size),
        "resize": config.data.get("resize", "bilinear"),
        "mean": json.dumps(list(IMAGENET_MEAN)),
        "std": json.dumps(list(IMAGENET_STD)),
        "input": "RGB resized to image_size x image_size (aspect ratio not kept), in [0, 1], then "
        "(x - mean) / std",
        "dataset": config.data.name,
        "run": os.path.abspath(run.workdir) if "://" not in run.workdir else run.workdir,
        "best_step": str(run.best_step),
        "trained_dtype": config.model.dtype,
    }


def export(
    workdir: str, out: str, *, data_dir: str | None = None, overwrite: bool = False, trunk_only: bool = False
) -> dict:
    """Writes `out` from the run's best checkpoint (the trunk alone with `trunk_only`); returns its
    metadata."""
    run = trained_run.open_run(workdir)
    if run.config.model.width != TORCHVISION_WIDTH and not trunk_only:
        raise ExportError(
            f"{workdir} trained a ResNet of width {run.config.model.width} (config.model.width), and "
            f"torchvision builds only width {TORCHVISION_WIDTH}, so PyTorch could not load the file; export "
            f"a run trained with --config.model.width={TORCHVISION_WIDTH} (or pass --trunk_only to write the trunk "
            "alone for `python -m bridgegap_jax.model.pretrained`)"
        )
    if os.path.exists(os.path.expanduser(out)) and not overwrite:
        raise ExportError(f"--out={out} exists; choose another --out, or pass --overwrite to replace it")
    _, variables = trained_run.restore(run, sharding.make_mesh())
    if trunk_only:  # no classes: the dataset is not needed
        info = {key: value for key, value in metadata(run, ()).items() if key in TRUNK_METADATA}
        info["format"] = (
            "bridgegap_jax: a torchvision ResNet trunk (no classifier), for bridgegap_jax.model.pretrained"
        )
    else:
        info = metadata(run, trained_run.open_dataset(run, data_dir).class_names)
    write_safetensors(
        out, torchvision_state_dict(variables, trunk_only=trunk_only), info, overwrite=overwrite
    )
    return info


def main(argv: list[str] | None = None) -> int:
    from absl import logging

    parser = ArgumentParser(prog="python -m bridgegap_jax.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="the run (python -m bridgegap_jax.main --workdir)")
    parser.add_argument("--out", required=True, help="the file to write, e.g. model.safetensors")
    parser.add_argument(
        "--data_dir", help="where the run's dataset is prepared (default: the run's data_dir)"
    )
    parser.add_argument(
        "--trunk_only",
        action="store_true",
        help="write the trunk alone (any width), for python -m bridgegap_jax.model.pretrained to convert",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.set_verbosity(logging.ERROR)  # orbax logs every file it reads
    try:
        info = export(
            args.workdir,
            args.out,
            data_dir=args.data_dir,
            overwrite=args.overwrite,
            trunk_only=args.trunk_only,
        )
    except (UserError, OSError) as error:
        if args.debug:
            raise
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    if args.trunk_only:
        print(
            f"wrote {args.out}: the ResNet-{info['depth']} trunk (width {info['width']}) under torchvision's "
            f"names, from the best checkpoint of {args.workdir} (step {info['best_step']}); convert it with "
            f"`python -m bridgegap_jax.model.pretrained --source={args.out} --out=DIR`"
        )
        return 0
    print(
        f"wrote {args.out}: the ResNet-{info['depth']} trunk under torchvision's names and the CAM head for "
        f"{info['num_classes']} classes, from the best checkpoint of {args.workdir} (step "
        f"{info['best_step']}); load it in PyTorch as docs/own_data.md shows"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
