"""The steps-to-target curve of `python scripts/study.py steps_to_target`: read the runs, tabulate, plot.

Shallue et al. 2019 ("Measuring the Effects of Data Parallelism on Neural Network Training") measure,
for each batch, the fewest steps that reach a fixed validation target: perfect scaling halves them at
each doubling of the batch, then the gain shrinks, then stops. Here the target is batch 16's best
validation mAP (the protocol's run: the epoch its model selection keeps, result.json) minus
TARGET_MARGIN; a run's steps to it are the step of its first validation at or above it (metrics.jsonl:
the epochs' ends and every train.validate_every_steps). Each
batch is shown by its run with the fewest steps to the target, or, where none reached it, by the one
with the best validation mAP; its test mAP is its run's (the best epoch's checkpoint, the protocol's).
"""

from __future__ import annotations

import dataclasses
import math
import os

from bridgegap_jax.prepare.built_in import SETS
from bridgegap_jax.report import flatten, read_records
from bridgegap_jax.run.rundir import RunDir

TARGET_MARGIN = 1.0  # mAP below batch 16's best validation
SMOOTHED = 3  # the table's second count: the mean of this many validations in a row reaches the target
REFERENCE_BATCH = 16
PLATEAU_GAIN = 0.5  # at most this much better in the last quarter of the budget: a plateau
SCALING_EXPONENT = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}
VALIDATION_KINDS = ("validation", "step_validation")


@dataclasses.dataclass
class CurveRun:
    """One run of the curve as it stands: its recipe, budget and validations so far."""

    name: str
    batch: int
    recipe: str
    lr: float  # the config's, for batch 16
    peak_lr: float  # after lr_scaling (the head takes head_lr_mult times it)
    epochs: int
    budget_steps: int
    validations: list[tuple[int, float]]  # (step, validation mAP) in step order
    test_map: float | None  # None until the run is finished
    selected_val_map: float | None  # the validation mAP of the epoch the test used (result.json)

    @property
    def finished(self) -> bool:
        return self.test_map is not None

    @property
    def best_val_map(self) -> float | None:
        return max((value for _, value in self.validations), default=None)

    def steps_to(self, target: float, window: int = 1) -> int | None:
        """The step of the first validation at or above `target` (None: not reached so far); with
        `window`, the first whose mean with the `window` - 1 before it is (a fluctuation counts less)."""
        values = [value for _, value in self.validations]
        for i in range(window - 1, len(values)):
            if sum(values[i - window + 1 : i + 1]) / window >= target:
                return self.validations[i][0]
        return None

    def last_quarter_gain(self) -> float:
        """How much better the best validation of the budget's last quarter is than the best before it."""
        split = 0.75 * self.budget_steps
        before = [value for step, value in self.validations if step <= split]
        after = [value for step, value in self.validations if step > split]
        return max(after) - max(before) if before and after else math.inf


def recipe(config: dict) -> str:
    """What a run does beyond batch 16's protocol, in words: optimizer, scaling, schedule, groups."""
    parts = [config["train.optimizer"]]
    if config["train.lr_scaling"] != "none":
        parts.append(f"{config['train.lr_scaling']} scaling")
    if config["train.warmup_epochs"]:
        parts.append(f"warm-up {config['train.warmup_epochs']:g} ep")
    if config["train.lr_decay"] != "none":
        parts.append(config["train.lr_decay"])
    if config["model.bn_group_size"] or config["loss.group_size"]:
        parts.append(f"groups {config['model.bn_group_size']}/{config['loss.group_size']}")
    return ", ".join(parts)


def read_run(workdir: str, name: str) -> CurveRun | None:
    """The run in `workdir` (None: not started) on a built-in dataset."""
    run_dir = RunDir(workdir)
    config = run_dir.stored_config() if run_dir.path.is_dir() else None
    if config is None:
        return None
    config, result = flatten(config), run_dir.result()
    batch, num_train = config["train.batch_size"], SETS[config["data.name"]].sizes["train"]
    validations = sorted(
        (record["step"], record["map"])
        for record in read_records(run_dir)
        if record.get("kind") in VALIDATION_KINDS and record.get("map") is not None
    )
    exponent = SCALING_EXPONENT[config["train.lr_scaling"]]
    return CurveRun(
        name=name,
        batch=batch,
        recipe=recipe(config),
        lr=config["train.lr"],
        peak_lr=config["train.lr"] * (batch / REFERENCE_BATCH) ** exponent,
        epochs=config["train.num_epochs"],
        budget_steps=config["train.num_epochs"] * -(-num_train // batch),
        validations=validations,
        test_map=None if result is None else result["test_map"],
        selected_val_map=None if result is None else result["best_val_map"],
    )


def target_of(reference: CurveRun | None) -> float | None:
    """Batch 16's best epoch's validation mAP minus TARGET_MARGIN, once its run is finished. (The best of
    every validation would be the highest of many noisy values, the epochs' best is the protocol's.)"""
    if reference is None or not reference.finished:
        return None
    return reference.selected_val_map - TARGET_MARGIN


def curve(runs: list[CurveRun], target: float) -> dict[int, CurveRun]:
    """batch -> the run that shows it: the fewest steps to the target, else the best validation mAP."""
    chosen = {}
    for batch in sorted({run.batch for run in runs}):
        candidates = [run for run in runs if run.batch == batch and run.validations]
        reached = [run for run in candidates if run.steps_to(target) is not None]
        if reached:
            chosen[batch] = min(reached, key=lambda run: run.steps_to(target))
        elif candidates:
            chosen[batch] = max(candidates, key=lambda run: run.best_val_map)
    return chosen


def outcome(run: CurveRun, target: float) -> str:
    steps = run.steps_to(target)
    if steps is not None:
        return f"{steps:,}"
    best = run.best_val_map
    if not run.finished:
        last = run.validations[-1][0] if run.validations else 0
        return "no validation yet" if best is None else f"not yet ({best:.2f} by step {last:,})"
    gain = run.last_quarter_gain()
    if gain <= PLATEAU_GAIN:
        return f"not reached (plateau {best:.2f})"
    return f"not reached ({best:.2f}, +{gain:.2f} in the last quarter: more steps)"


def table(runs: list[CurveRun], target: float | None) -> str:
    """The markdown table: every run, batch by batch, the batch's run on the curve first (marked *)."""
    header = (
        f"| batch | run | recipe | lr (peak) | budget | steps to target | mean of {SMOOTHED} | best val mAP "
        f"| test mAP | fewer steps than batch 16 (mean of {SMOOTHED}) | perfect scaling |"
    )
    lines = [header, "|--:|---|---|---|--:|--:|--:|--:|--:|--:|--:|"]
    chosen = curve(runs, target) if target is not None else {}
    reference = chosen.get(REFERENCE_BATCH)

    def counts(run):  # (steps to the target, with the mean of SMOOTHED validations)
        if run is None or target is None:
            return None, None
        return run.steps_to(target), run.steps_to(target, SMOOTHED)

    first, smoothed = counts(reference)
    for run in sorted(runs, key=lambda run: (run.batch, run is not chosen.get(run.batch))):
        steps, steps_smoothed = counts(run)
        ratio = f"{first / steps:.1f}x" if steps and first else ""
        if steps_smoothed and smoothed:
            ratio += f" ({smoothed / steps_smoothed:.1f}x)"
        best = run.best_val_map
        cells = [
            f"{run.batch}{'*' if run is chosen.get(run.batch) else ''}",
            run.name,
            run.recipe,
            f"{run.lr:g} ({run.peak_lr:.3g})",
            f"{run.epochs} ep, {run.budget_steps:,} steps",
            outcome(run, target) if target is not None else "(no target yet)",
            f"{steps_smoothed:,}" if steps_smoothed else "",
            "" if best is None else f"{best:.2f}",
            "" if run.test_map is None else f"{run.test_map:.2f}",
            ratio,
            f"{run.batch / REFERENCE_BATCH:g}x",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(runs: list[CurveRun], target: float, path: str, noise_scale: float | None = None) -> str:
    """Steps to the target against the batch on log-log axes, the perfect-scaling line through batch
    16's point, the batches that did not reach it at their budget, and `noise_scale` as a vertical line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = curve(runs, target)
    reached = {batch: run.steps_to(target) for batch, run in chosen.items() if run.steps_to(target)}
    missed = {
        batch: run.budget_steps for batch, run in chosen.items() if batch not in reached and run.finished
    }
    figure, axes = plt.subplots(figsize=(6.4, 4.8))
    if reached:
        axes.plot(list(reached), list(reached.values()), "o-", color="C0", label="steps to the target")
        for batch, steps in reached.items():
            axes.annotate(f"{steps:,}", (batch, steps), textcoords="offset points", xytext=(6, 6), fontsize=8)
    if missed:
        label = "not reached in its budget (at the budget)"
        axes.plot(list(missed), list(missed.values()), "^", color="C3", mfc="none", ms=9, label=label)
    if REFERENCE_BATCH in reached:
        batches = sorted({*reached, *missed})
        perfect = [reached[REFERENCE_BATCH] * REFERENCE_BATCH / batch for batch in batches]
        axes.plot(batches, perfect, "--", color="grey", label="perfect scaling from batch 16")
    if noise_scale:
        axes.axvline(noise_scale, color="C2", ls=":", label=f"gradient noise scale {noise_scale:,.0f}")
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    batches = sorted({run.batch for run in runs})
    axes.set_xticks(batches, [str(batch) for batch in batches])
    axes.set_xlabel("batch size")
    axes.set_ylabel(f"steps to validation mAP >= {target:.2f}")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path
