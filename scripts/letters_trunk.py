"""An offline stand-in for an ImageNet trunk: train ResNet-18 on the letters, export, convert.

    python scripts/letters_trunk.py --width 16     # the demo's width (configs/demo_finetune.py)
    python scripts/letters_trunk.py --width 8      # demo_large's width (configs/demo_large_finetune.py)

Three steps, each skipped when its output is already there, so the command is also the cache:
  1. train configs/letters.py (full labels, from scratch) in WEIGHTS/source_runs/letters_resnet18_wW
     (an interrupted run resumes; a finished one is only reported);
  2. export its best checkpoint's trunk under torchvision's names, as torchvision's ImageNet files
     hold it: `python -m bridgegap_jax.export --trunk_only` -> WEIGHTS/letters_resnet18_wW.safetensors;
  3. convert that file exactly as a user converts torchvision's:
     `python -m bridgegap_jax.model.pretrained` -> WEIGHTS/letters_resnet18_wW, what `model.pretrained` loads.
WEIGHTS is --weights (default ~/bridgegap_weights). Further `--config.a.b=value` flags go to step 1
(e.g. `--config.data.data_dir=DIR`). Nothing here is committed: the trunk is made on demand.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def paths(weights: str, width: int) -> dict[str, str]:
    """Where the source run, the exported file and the converted trunk of `width` live."""
    weights = os.path.expanduser(weights)
    name = f"letters_resnet18_w{width}"
    return {
        "run": os.path.join(weights, "source_runs", name),
        "file": os.path.join(weights, name + ".safetensors"),
        "trunk": os.path.join(weights, name),
    }


def step(title: str, args: list[str]) -> None:
    print(f"{title}: python {' '.join(args)}", flush=True)
    done = subprocess.run([sys.executable, *args], cwd=ROOT)
    if done.returncode != 0:
        sys.exit(done.returncode)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--width", type=int, required=True, help="the trunk's width (16: demo, 8: demo_large)"
    )
    parser.add_argument("--weights", default="~/bridgegap_weights", help="where the three outputs go")
    args, passthrough = parser.parse_known_args(argv)
    unknown = [flag for flag in passthrough if not flag.startswith("--config.")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (config overrides: --config.a.b=value)")
    where = paths(args.weights, args.width)
    if os.path.exists(where["trunk"]):
        print(f"{where['trunk']} is there: nothing to do", flush=True)
        return 0
    step(
        "1/3 train the letters",
        [
            "-m",
            "bridgegap_jax.main",
            "--config=configs/letters.py",
            f"--config.model.width={args.width}",
            f"--workdir={where['run']}",
            *passthrough,
        ],
    )
    if not os.path.exists(where["file"]):
        step(
            "2/3 export the trunk",
            [
                "-m",
                "bridgegap_jax.export",
                f"--workdir={where['run']}",
                f"--out={where['file']}",
                "--trunk_only",
            ],
        )
    step(
        "3/3 convert it",
        ["-m", "bridgegap_jax.model.pretrained", f"--source={where['file']}", f"--out={where['trunk']}"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
