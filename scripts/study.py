"""Train a grid of runs, several seeds each, and print their table (mean ± std over seeds).

    python scripts/study.py demo    # the demo's variants: AN, LL-R, AN + BoostLU, LL-R + BoostLU,
                                    # full labels, and LL-R + BoostLU in bfloat16 (configs/demo.py)
    python scripts/study.py batch   # large-batch recipes at global batch 16 / 128 / 512 (configs/demo_large.py)
    python scripts/study.py batch --only b16,b512-groups16-32ep   # some entries of a grid
    python scripts/study.py finetune        # the demo's variants fine-tuned from the letters trunk and
                                            # from scratch (configs/demo_finetune.py)
    python scripts/study.py finetune_batch  # large-batch recipes at 16 / 128 / 512 / 2048, fine-tuning
                                            # the width-8 letters trunk (configs/demo_large_finetune.py)
    python scripts/study.py finetune_lr --seeds 0        # the fine-tuning lr sweeps of those two configs
    python scripts/study.py finetune_batch_lr --seeds 0
    python scripts/study.py steps_to_target  # steps to batch 16's validation target at batch 16 to 4,096
                                             # (configs/demo_xl.py; seed 0)
    python scripts/study.py steps_to_target --table --plot --noise_scale=B   # the curve so far, no training

Options: --runs DIR (default runs/study_<grid>), --seeds 0,1,2 (steps_to_target: 0), --only
NAME[,NAME] (grid entries), --list (print the runs and exit), and any --config.a.b=value, passed to
every run (e.g. a data_dir, or --config.model.pretrained=DIR: the trunk to fine-tune). Each run is
`python -m bridgegap_jax.main` in RUNS/<entry>_s<seed>; a finished run is only reported and an
interrupted one resumes, so rerunning the command continues the study. The table is `python -m
bridgegap_jax.report --seeds` of the runs; steps_to_target prints its curve (scripts/steps_to_target.py)
and, with --plot [PNG], draws it (--noise_scale=B: a vertical line at that batch); --table prints
it for the runs as they stand, training nothing. A grid that fine-tunes starts from its config's
converted trunk (model.pretrained, or the one given); a missing letters trunk is made first, once,
by scripts/letters_trunk.py (train the letters, export the trunk, convert it).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # configs/ (and the package, where it is not installed)

# name -> --config overrides
DEMO = {
    "an": {"loss.scheme": "AN", "model.alpha": 1.0},
    "ll-r": {"model.alpha": 1.0},
    "an+boostlu": {"loss.scheme": "AN"},
    "ll-r+boostlu": {},
    "full-labels": {"data.train_labels": "full", "loss.scheme": "AN", "model.alpha": 1.0},
    "ll-r+boostlu-bf16": {"model.dtype": "bfloat16"},
}


# A layer-wise optimizer's lr as a multiple of the config's Adam lr. Adam moves every weight by about
# lr, LAMB every kernel by about lr x its rms (~0.1 in these trunks), LARS by about 0.001 lr x its rms:
# x10 and x10,000 give the first steps Adam's size, x1 and x1,000 a tenth of it (LAMB at x10 and
# LARS at x10,000 stalled and diverged at batch 512 in this grid).
LAYER_WISE_LR = {"lamb": (1.0, 10.0), "lars": (1_000.0, 10_000.0)}

GROUPS = {"model.bn_group_size": 16, "loss.group_size": 16}


def layer_wise(batch: int, optimizer: str, factor: float, lr: float) -> tuple[str, dict]:
    """A grid entry: `optimizer` at `factor` x the Adam `lr`, sqrt scaling (as LAMB's paper), one epoch
    of warm-up, cosine decay, and BatchNorm statistics and large-loss ranking in groups of 16."""
    return f"b{batch}-{optimizer}x{factor:g}-sqrt-cos-groups16", {
        "train.batch_size": batch,
        "train.warmup_epochs": 1.0,
        "train.lr_decay": "cosine",
        "train.lr_scaling": "sqrt",
        **GROUPS,
        "train.optimizer": optimizer,
        "train.lr": lr * factor,
    }


def batch_grid() -> dict:
    """Batch 16 (the protocol) and four recipes at 128 and 512, all for the same 8 epochs: the same lr;
    sqrt scaling and one epoch of warm-up; that plus BatchNorm and large-loss ranking over groups of
    16; linear scaling with both. Then batch 512 at the same lr with warm-up and both groupings for 32
    epochs: 800 steps, 8x fewer than batch 16's 6,400. Then the fine-tuning grid's best recipe (LARS,
    sqrt scaling, warm-up, cosine decay, the groups) at 512 and 2048 in the same 8 epochs, and at a tenth
    of its lr at 512 for 8 and 32 epochs."""
    grid = {"b16": {"train.batch_size": 16}}
    for batch in (128, 512):
        warm = {"train.batch_size": batch, "train.warmup_epochs": 1.0}
        grid[f"b{batch}-naive"] = {"train.batch_size": batch}
        grid[f"b{batch}-sqrt"] = {**warm, "train.lr_scaling": "sqrt"}
        grid[f"b{batch}-sqrt-groups16"] = {**warm, "train.lr_scaling": "sqrt", **GROUPS}
        grid[f"b{batch}-linear-groups16"] = {**warm, "train.lr_scaling": "linear", **GROUPS}
    grid["b512-groups16-32ep"] = {
        "train.batch_size": 512,
        "train.warmup_epochs": 1.0,
        **GROUPS,
        "train.num_epochs": 32,
    }
    # The fine-tuning grid's best large-batch recipe (finetune_batch_grid), once more from scratch
    from configs import demo_large

    lr = demo_large.get_config().train.lr
    for batch, factor in ((512, 1_000.0), (2048, 1_000.0), (512, 100.0)):  # x100: x1,000 diverged at 512
        name, overrides = layer_wise(batch, "lars", factor, lr)
        grid[name] = overrides
    name, overrides = layer_wise(512, "lars", 100.0, lr)
    grid[f"{name}-32ep"] = {**overrides, "train.num_epochs": 32}  # 8x fewer steps than batch 16
    return grid


def finetune_grid() -> dict:
    """The demo's table in the fine-tuning regime: full labels, AN, LL-R, AN + BoostLU, LL-R + BoostLU,
    each fine-tuned from the letters trunk (configs/demo_finetune.py) and trained from scratch as
    configs/demo.py does (no trunk, the demo's lr)."""
    from configs import demo

    variants = {name: DEMO[name] for name in ("full-labels", "an", "ll-r", "an+boostlu", "ll-r+boostlu")}
    scratch = {"model.pretrained": "", "train.lr": demo.get_config().train.lr}
    grid = {f"{name}-pretrained": overrides for name, overrides in variants.items()}
    grid.update({f"{name}-scratch": {**overrides, **scratch} for name, overrides in variants.items()})
    return grid


FINE_TUNING_LRS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)


def lr_sweep() -> dict:
    """The fine-tuning lr, chosen on validation mAP: the config's default run (LL-R + BoostLU, batch 16)
    at each lr of FINE_TUNING_LRS (the paper's 1e-5 up to the demo's from-scratch 1e-3)."""
    return {f"lr{lr:g}": {"train.lr": lr} for lr in FINE_TUNING_LRS}


def finetune_batch_grid() -> dict:
    """Batch 16 (the protocol; and with cosine decay, to see what decay alone does), then at batch
    128, 512 and 2048 in the same 8 epochs (8x, 32x, 128x fewer steps): the same lr; sqrt and linear
    scaling with one epoch of warm-up and cosine decay, without and with BatchNorm statistics and
    large-loss ranking in groups of 16; LAMB and LARS at two lrs each (sqrt scaling, as LAMB's
    paper) with warm-up, decay and the groups."""
    from configs import demo_large_finetune

    lr = demo_large_finetune.get_config().train.lr
    grid = {"b16": {"train.batch_size": 16}, "b16-cos": {"train.batch_size": 16, "train.lr_decay": "cosine"}}
    for batch in (128, 512, 2048):
        cos = {"train.batch_size": batch, "train.warmup_epochs": 1.0, "train.lr_decay": "cosine"}
        grid[f"b{batch}-naive"] = {"train.batch_size": batch}
        for scaling in ("sqrt", "linear"):
            grid[f"b{batch}-{scaling}-cos"] = {**cos, "train.lr_scaling": scaling}
            grid[f"b{batch}-{scaling}-cos-groups16"] = {**cos, "train.lr_scaling": scaling, **GROUPS}
        for optimizer, factors in LAYER_WISE_LR.items():
            for factor in factors:
                name, overrides = layer_wise(batch, optimizer, factor, lr)
                grid[name] = overrides
    return grid


# The steps-to-target curve (configs/demo_xl.py: 65,536 training mosaics, so 16 to 4,096 all
# divide an epoch): batch -> (epochs of its budget, lr factors of its sweep). The budgets give each
# batch several times the steps that perfect scaling from batch 16 would need.
STEPS_BUDGET_EPOCHS = {16: 2, 64: 2, 256: 3, 1024: 4, 4096: 8}
VALIDATION_IMAGES = 2_048  # a validation every 2,048 training images (every 128 steps at 16, each at 4,096)


def steps_entry(batch: int, optimizer: str, factor: float, epochs: int, scaling: str = "sqrt") -> tuple:
    """Batch 16: the protocol (Adam, constant lr). Larger: `optimizer` at `factor` x the config's Adam lr,
    `scaling` from batch 16, a warm-up over the first eighth of the budget and cosine decay to 0 at its
    end (the finetune_batch grid's 1 of 8 epochs), BatchNorm and large-loss ranking in groups of 16."""
    from configs import demo_xl

    lr = float(f"{demo_xl.get_config().train.lr * factor:.6g}")
    overrides = {
        "train.batch_size": batch,
        "train.num_epochs": epochs,
        "train.validate_every_steps": max(1, VALIDATION_IMAGES // batch),
    }
    if batch == 16 and optimizer == "adam":
        return f"b16-adam-lr{lr:g}-{epochs}ep", {**overrides, "train.lr": lr}
    name = f"b{batch}-{optimizer}{f'x{factor:g}' if factor != 1 else ''}-{scaling}-{epochs}ep"
    return name, {
        **overrides,
        "train.optimizer": optimizer,
        "train.lr": lr,
        "train.lr_scaling": scaling,
        "train.warmup_epochs": epochs / 8,
        "train.lr_decay": "cosine",
        **GROUPS,
    }


# The cost of a run of the curve, for planning: training images/s by batch on this repository's 2-core
# CPU VM when idle (the finetune_batch table: 16 -> 560, 128 -> 640, 512 -> 580, 2048 -> 450; 4,096
# extrapolated), seconds per validation pass (1,280 images), start-up and test. Loaded by other jobs,
# the VM took 1.6x (batch 16) to 2.8x (4,096) these estimates.
STEPS_IMAGES_PER_S = {16: 560, 64: 600, 256: 600, 1024: 520, 4096: 400}
STEPS_VALIDATION_S, STEPS_START_S = 1.5, 90


def steps_cost_hours(entry: dict) -> float:
    """About how long a run of steps_grid takes on the CPU it was measured on (STEPS_IMAGES_PER_S)."""
    from bridgegap_jax.prepare.built_in import SETS

    batch, epochs = entry["train.batch_size"], entry["train.num_epochs"]
    steps = epochs * SETS["demo_xl"].sizes["train"] // batch
    validations = steps // entry["train.validate_every_steps"] + epochs
    seconds = steps * batch / STEPS_IMAGES_PER_S[batch] + validations * STEPS_VALIDATION_S + STEPS_START_S
    return seconds / 3600


def steps_grid() -> dict:
    """In the order that says the most first: batch 16 (it fixes the target), then 4,096 and 1,024 with
    the finetune_batch grid's best large-batch recipe (LARS x1,000, sqrt scaling), then 256 (LARS) and
    64 (Adam, linear scaling, as batch 128 did best there), then batch 4,096 with half its budget (its
    cosine decay comes sooner: fewer steps to the target?), then the lr sweeps: x300 and x3,000 for
    LARS, Adam at 256 and with sqrt scaling at 64, and batch 16 at the 1e-3 that beat 3e-4 on
    demo_large_finetune."""
    entries = [
        steps_entry(16, "adam", 1.0, STEPS_BUDGET_EPOCHS[16]),
        *(steps_entry(b, "lars", 1_000.0, STEPS_BUDGET_EPOCHS[b]) for b in (4096, 1024, 256)),
        steps_entry(64, "adam", 1.0, STEPS_BUDGET_EPOCHS[64], "linear"),
        steps_entry(4096, "lars", 1_000.0, STEPS_BUDGET_EPOCHS[4096] // 2),
        *(steps_entry(b, "lars", 300.0, STEPS_BUDGET_EPOCHS[b]) for b in (4096, 1024, 256)),
        steps_entry(256, "adam", 1.0, STEPS_BUDGET_EPOCHS[256], "linear"),
        steps_entry(64, "adam", 1.0, STEPS_BUDGET_EPOCHS[64], "sqrt"),
        steps_entry(16, "adam", 10 / 3, STEPS_BUDGET_EPOCHS[16]),
        *(steps_entry(b, "lars", 3_000.0, STEPS_BUDGET_EPOCHS[b]) for b in (4096, 1024)),
    ]
    return dict(entries)


STEPS_PLOT = "docs/large_batch/steps_to_target.png"

# name -> (config, entries)
GRIDS = {
    "demo": ("configs/demo.py", lambda: DEMO),
    "batch": ("configs/demo_large.py", batch_grid),
    "finetune": ("configs/demo_finetune.py", finetune_grid),
    "finetune_batch": ("configs/demo_large_finetune.py", finetune_batch_grid),
    "finetune_lr": ("configs/demo_finetune.py", lr_sweep),
    "finetune_batch_lr": ("configs/demo_large_finetune.py", lr_sweep),
    "steps_to_target": ("configs/demo_xl.py", steps_grid),
}


TRUNK_FLAG = "--config.model.pretrained="


class StudyError(Exception):
    """A study that cannot start; the message says what to give instead."""


def trunk_command(config_file: str, entries: list[dict], passthrough: list[str]) -> list[str] | None:
    """The command that makes the converted trunk a fine-tuning grid starts from, if it is missing
    (scripts/letters_trunk.py: train the letters, export, convert; docs/weights.md, "A pretrained trunk made
    offline"); None when the trunk is there or no entry needs it. The trunk is the config's
    model.pretrained, or the last --config.model.pretrained= given."""
    from bridgegap_jax.model import pretrained

    module = __import__(config_file[:-3].replace("/", "."), fromlist=["get_config"])
    config = module.get_config()
    given = [flag[len(TRUNK_FLAG) :] for flag in passthrough if flag.startswith(TRUNK_FLAG)]
    path = given[-1] if given else config.model.pretrained
    if not path or all(entry.get("model.pretrained", path) == "" for entry in entries):
        return None
    if os.path.isdir(os.path.join(os.path.expanduser(path), pretrained.VARIABLES_ITEM)):
        return None
    weights, name = os.path.split(os.path.expanduser(path).rstrip("/"))
    if name != f"letters_resnet18_w{config.model.width}":  # not one that letters_trunk.py makes
        raise StudyError(
            f"{TRUNK_FLAG}{path}: no converted trunk there (no {pretrained.VARIABLES_ITEM}/ inside); give "
            "the folder that `python -m bridgegap_jax.model.pretrained --out=DIR` wrote, or leave it out"
        )
    data_dir = [flag for flag in passthrough if flag.startswith("--config.data.data_dir=")]
    return ["scripts/letters_trunk.py", f"--width={config.model.width}", f"--weights={weights}", *data_dir]


def run_flags(config_file: str, workdir: str, seed: int, entry: dict, passthrough: list[str]) -> list[str]:
    """main's flags for one run: the entry's overrides, then the command's; a given trunk goes only to the
    entries that fine-tune (one that sets model.pretrained, e.g. '' from scratch, keeps its own)."""
    if "model.pretrained" in entry:
        passthrough = [flag for flag in passthrough if not flag.startswith(TRUNK_FLAG)]
    return [
        f"--config={config_file}",
        f"--workdir={workdir}",
        f"--config.seed={seed}",
        *[f"--config.{key}={value}" for key, value in entry.items()],
        *passthrough,
    ]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("grid", choices=list(GRIDS))
    parser.add_argument("--runs", help="folder of the runs (default: runs/study_<grid>)")
    parser.add_argument("--seeds", help="comma-separated seeds (default: 0,1,2; steps_to_target: 0)")
    parser.add_argument("--only", default="", help="comma-separated grid entries (default: all)")
    parser.add_argument("--list", action="store_true", help="print the runs of the grid and exit")
    parser.add_argument("--table", action="store_true", help="steps_to_target: the curve so far, no training")
    parser.add_argument(
        "--plot", nargs="?", const=STEPS_PLOT, help=f"steps_to_target: draw the curve (default {STEPS_PLOT})"
    )
    parser.add_argument(
        "--noise_scale", type=float, help="steps_to_target: a gradient noise scale, drawn at that batch"
    )
    args, passthrough = parser.parse_known_args(argv)
    unknown = [flag for flag in passthrough if not flag.startswith("--config.")]
    if unknown:
        parser.error(
            f"unrecognized arguments: {' '.join(unknown)} (config overrides look like --config.a.b=value)"
        )
    config, make_grid = GRIDS[args.grid]
    grid = make_grid()
    names = [n for n in args.only.split(",") if n] or list(grid)
    missing = [n for n in names if n not in grid]
    if missing:
        parser.error(f"--only: {', '.join(missing)} not in the grid ({', '.join(grid)})")
    steps = args.grid == "steps_to_target"
    if not steps and (args.table or args.plot or args.noise_scale):
        parser.error("--table, --plot and --noise_scale draw the steps_to_target curve only")
    try:
        make_trunk = None if args.table else trunk_command(config, [grid[n] for n in names], passthrough)
    except StudyError as error:
        parser.error(str(error))
    if make_trunk and args.list:
        print("python " + " ".join(make_trunk) + "   # the missing trunk, made first")
    elif make_trunk:  # made on demand, once: later studies find it
        print(
            f"{config} starts from a trunk that is not there yet: python {' '.join(make_trunk)}", flush=True
        )
        done = subprocess.run([sys.executable, *make_trunk], cwd=ROOT)
        if done.returncode != 0:
            return done.returncode
    runs = args.runs or os.path.join("runs", f"study_{args.grid}")
    seeds = [int(s) for s in (args.seeds or ("0" if steps else "0,1,2")).split(",")]
    workdirs = {}
    for name in names:
        for seed in seeds:
            workdir = os.path.join(runs, f"{name}_s{seed}")
            flags = run_flags(config, workdir, seed, grid[name], passthrough)
            workdirs[workdir] = f"{name}_s{seed}"
            if args.list:
                cost = f"   # about {steps_cost_hours(grid[name]):.2f} h of CPU" if steps else ""
                print("python -m bridgegap_jax.main " + " ".join(flags) + cost)
                continue
            if args.table:
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
    if steps:  # the target comes from the grid's first entry, batch 16's protocol, whatever --only says
        reference = os.path.join(runs, f"{next(iter(grid))}_s{seeds[0]}")
        return print_curve(workdirs, reference, args.plot, args.noise_scale)
    return subprocess.run(
        [sys.executable, "-m", "bridgegap_jax.report", "--seeds", *workdirs], cwd=ROOT
    ).returncode


def print_curve(workdirs: dict, reference_dir: str, plot_path: str | None, noise_scale: float | None) -> int:
    """The steps-to-target table of the runs in `workdirs` ({workdir: name}) as they stand, with the
    target from the run in `reference_dir`, the command that makes it, and the plot if asked for."""
    import steps_to_target as curve

    runs = {workdir: curve.read_run(os.path.join(ROOT, workdir), name) for workdir, name in workdirs.items()}
    reference = curve.read_run(os.path.join(ROOT, reference_dir), os.path.basename(reference_dir))
    target = curve.target_of(reference)
    if target is None:
        print(f"the target comes from {reference_dir} once it is finished: none yet")
    else:
        print(
            f"target: validation mAP >= {target:.2f} ({reference.name}'s best epoch, "
            f"{reference.selected_val_map:.2f}, minus {curve.TARGET_MARGIN:g})"
        )
    print(curve.table([run for run in runs.values() if run is not None], target))
    print("\n* the batch's run on the curve; made by: python scripts/study.py steps_to_target")
    if plot_path and target is not None:
        print(f"plot: {curve.plot([run for run in runs.values() if run], target, plot_path, noise_scale)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
