"""Train a grid of runs, several seeds each, and print their table (mean ± std over seeds).

    python scripts/study.py demo    # the demo's variants: AN, LL-R, AN + BoostLU, LL-R + BoostLU,
                                    # full labels, and LL-R + BoostLU in bfloat16 (configs/demo.py)
    python scripts/study.py batch   # large-batch recipes at global batch 16 / 128 / 512 (configs/demo_large.py)
    python scripts/study.py batch --only b16,b512-groups16-32ep   # some entries of a grid

Options: --runs DIR (default runs/study_<grid>), --seeds 0,1,2, --only NAME[,NAME] (grid entries),
--list (print the runs and exit), and any --config.a.b=value, passed to every run (e.g. a
data_dir). Each run is `python -m bridgegap_jax.main` in RUNS/<entry>_s<seed>; a finished run is
only reported and an interrupted one resumes, so rerunning the command continues the study.
The table is `python -m bridgegap_jax.report --seeds` of the runs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> --config overrides
DEMO = {
    "an": {"loss.scheme": "AN", "model.alpha": 1.0},
    "ll-r": {"model.alpha": 1.0},
    "an+boostlu": {"loss.scheme": "AN"},
    "ll-r+boostlu": {},
    "full-labels": {"data.train_labels": "full", "loss.scheme": "AN", "model.alpha": 1.0},
    "ll-r+boostlu-bf16": {"model.dtype": "bfloat16"},
}


def batch_grid() -> dict:
    """Batch 16 (the protocol) and four recipes at 128 and 512, all for the same 8 epochs: the same lr;
    sqrt scaling and one epoch of warm-up; that plus BatchNorm and large-loss ranking over groups of
    16; linear scaling with both. Then batch 512 at the same lr with warm-up and both groupings for 32
    epochs: 800 steps, 8x fewer than batch 16's 6,400."""
    grid = {"b16": {"train.batch_size": 16}}
    groups = {"model.bn_group_size": 16, "loss.group_size": 16}
    for batch in (128, 512):
        warm = {"train.batch_size": batch, "train.warmup_epochs": 1.0}
        grid[f"b{batch}-naive"] = {"train.batch_size": batch}
        grid[f"b{batch}-sqrt"] = {**warm, "train.lr_scaling": "sqrt"}
        grid[f"b{batch}-sqrt-groups16"] = {**warm, "train.lr_scaling": "sqrt", **groups}
        grid[f"b{batch}-linear-groups16"] = {**warm, "train.lr_scaling": "linear", **groups}
    grid["b512-groups16-32ep"] = {
        "train.batch_size": 512,
        "train.warmup_epochs": 1.0,
        **groups,
        "train.num_epochs": 32,
    }
    return grid


GRIDS = {"demo": ("configs/demo.py", DEMO), "batch": ("configs/demo_large.py", batch_grid())}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("grid", choices=list(GRIDS))
    parser.add_argument("--runs", help="folder of the runs (default: runs/study_<grid>)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--only", default="", help="comma-separated grid entries (default: all)")
    parser.add_argument("--list", action="store_true", help="print the runs of the grid and exit")
    args, passthrough = parser.parse_known_args(argv)
    unknown = [flag for flag in passthrough if not flag.startswith("--config.")]
    if unknown:
        parser.error(
            f"unrecognized arguments: {' '.join(unknown)} (config overrides look like --config.a.b=value)"
        )
    config, grid = GRIDS[args.grid]
    names = [n for n in args.only.split(",") if n] or list(grid)
    missing = [n for n in names if n not in grid]
    if missing:
        parser.error(f"--only: {', '.join(missing)} not in the grid ({', '.join(grid)})")
    runs = args.runs or os.path.join("runs", f"study_{args.grid}")
    seeds = [int(s) for s in args.seeds.split(",")]
    workdirs = []
    for name in names:
        for seed in seeds:
            workdir = os.path.join(runs, f"{name}_s{seed}")
            flags = [
                f"--config={config}",
                f"--workdir={workdir}",
                f"--config.seed={seed}",
                *[f"--config.{key}={value}" for key, value in grid[name].items()],
                *passthrough,
            ]
            workdirs.append(workdir)
            if args.list:
                print("python -m bridgegap_jax.main " + " ".join(flags))
                continue
            start = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "bridgegap_jax.main", *flags], cwd=ROOT, capture_output=True, text=True
            )
            last = (done.stdout.strip().splitlines() or [""])[-1]
            print(
                f"{workdir}: {time.perf_counter() - start:.0f} s, "
                f"{last if done.returncode == 0 else done.stderr.strip()}",
                flush=True,
            )
            if done.returncode != 0:
                return done.returncode
    if args.list:
        return 0
    print()
    return subprocess.run(
        [sys.executable, "-m", "bridgegap_jax.report", "--seeds", *workdirs], cwd=ROOT
    ).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
