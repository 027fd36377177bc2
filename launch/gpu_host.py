#!/usr/bin/env python3
"""Train on one machine with several GPUs: one process drives all of them (jit over a mesh).

    python launch/gpu_host.py setup run --workdir=runs/oi --data_dir=/data/tfds [--gpus=0,1,2,3] \
        [--config=configs/openimages.py] [--pretrained=DIR] [--dry-run] [-- --config.loss.scheme=LL-Cp ...]

`setup` installs the package with CUDA jax into the active Python environment, at the versions of
constraints.txt; `run` trains (rerun it to resume). The global batch (config.train.batch_size, 16 as
the paper) is split over the GPUs, so their number must divide it. --dry-run prints the commands instead of running them.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

import common  # launch/common.py: the script's own folder is on sys.path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = ("setup", "run")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("steps", nargs="+", choices=STEPS, help="what to do, in order")
    common.add_run_flags(parser, "local path or gs://")
    parser.add_argument("--gpus", help="CUDA device ids to use, e.g. 0,1,2,3 (default: all)")
    args = common.parse_with_overrides(parser, argv)
    if "run" in args.steps:
        missing = [f"--{name}" for name in ("workdir", "data_dir") if not getattr(args, name)]
        if missing:
            parser.error(f"step 'run' needs {', '.join(missing)}")
    if args.gpus is not None and not all(part.isdigit() for part in args.gpus.split(",")):
        parser.error(f"--gpus={args.gpus} is not a comma-separated list of GPU ids like 0,1,2,3")
    return args


def commands(args, step: str) -> list[list[str]]:
    if step == "setup":
        return [
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-c",
                os.path.join(REPO, "constraints.txt"),
                "jax[cuda12]",
                "-e",
                REPO,
            ]
        ]
    env = [f"CUDA_VISIBLE_DEVICES={args.gpus}"] if args.gpus is not None else []
    return [["env", *env, sys.executable, "-m", "bridgegap_jax.main", *common.run_flags(args, args.data_dir)]]


def main(argv: list[str]) -> None:
    args = parse(argv)
    for step in args.steps:
        for command in commands(args, step):
            print(f"$ {shlex.join(command)}", flush=True)
            if not args.dry_run and subprocess.run(command, cwd=REPO).returncode != 0:
                sys.exit(f"step '{step}' failed")


if __name__ == "__main__":
    main(sys.argv[1:])
