"""Compare runs in one markdown table: python -m bridgegap_jax.report runs/*

One row per workdir: the config fields that differ between the runs (dotted names), the best
epoch, validation and test mAP (and OpenImages' frequency groups), the wall time and whether the
run has finished; the fields all runs share are listed once under the table. With --seeds, runs
that differ only in `seed` make one row of mean ± sample std over their finished runs (n shown).
Under it, each run's gradient noise scale: the mean of the values it logged in its last epoch, and
which batches it says use their steps efficiently. A path that is not a readable run (`not a run`,
`damaged config.json`) is listed under the table with what it is; so is what is wrong with a run
whose status is `damaged result.json` or `latest checkpoints unreadable` (none of them would restore:
checkpoint_files.py). Exit code 0, or 2 when no path is a readable run. Reads local and gs://
workdirs alike, without importing JAX.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys

from bridgegap_jax.base.errors import UserError
from bridgegap_jax.run import checkpoint_files, noise_scale
from bridgegap_jax.run.clock import hms
from bridgegap_jax.run.rundir import CONFIG_FILE, METRICS_FILE, RESULT_FILE, RunDir, RunDirError

SEED = "seed"
MISSING = "-"  # a field that a run's config does not have (made by another version)


class ReportError(UserError, ValueError):
    """A path that is not a readable workdir; the message names it and says what it is."""


@dataclasses.dataclass
class Run:
    workdir: str
    config: dict  # dotted field name -> value
    scores: dict  # 'val mAP', 'test mAP', 'group1'.. (OpenImages' groups' mAP) -> percent (None: a group
    # without an observed class): those known so far
    best_epoch: int | None
    wall_time_s: float | None
    status: str  # 'finished', 'unfinished, epoch E/N', 'not started' or what keeps it from going on
    steps: int | None = None  # training steps done
    images_per_second: float | None = (
        None  # training, median of the logged windows but the first (compilation)
    )

    problem: str = ""  # what is wrong, when the status says that something is

    @property
    def finished(self) -> bool:
        return self.status == "finished"


def flatten(tree: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}. (flax.traverse_util.flatten_dict(tree, sep='.') would import JAX,
    which takes this tool from a fraction of a second to seconds.)"""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def read_records(run_dir: RunDir) -> list[dict]:
    path = run_dir.file(METRICS_FILE)
    records = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            records.append(json.loads(line))
        except ValueError:  # a line cut by a crash
            continue
    return records


def load_run(workdir: str) -> Run:
    """A finished run from its result.json; an unfinished one from its validations so far."""
    run_dir = RunDir(workdir)
    if not run_dir.path.exists():
        raise ReportError(f"{workdir}: does not exist")
    if not run_dir.path.is_dir():
        raise ReportError(f"{workdir}: not a run (a file, not a workdir of bridgegap_jax.main)")
    try:
        config = run_dir.stored_config()
    except RunDirError as error:
        raise ReportError(f"{workdir}: damaged {CONFIG_FILE} {damage(error)}") from None
    if config is None:
        raise ReportError(f"{workdir}: not a run (no {CONFIG_FILE}: not a workdir of bridgegap_jax.main)")
    config = flatten(config)
    try:
        result = run_dir.result()
    except RunDirError as error:
        return Run(workdir, config, {}, None, None, f"damaged {RESULT_FILE}", problem=damage(error))
    records = read_records(run_dir)
    pace = training_pace(records)
    if result is not None:
        scores = {
            "val mAP": result["best_val_map"],
            "test mAP": result["test_map"],
            **{name: group["map"] for name, group in result.get("test_groups", {}).items()},
        }
        return Run(
            workdir, config, scores, result["best_epoch"], result.get("wall_time_s"), "finished", *pace
        )
    if not records:
        return Run(workdir, config, {}, None, None, "not started")
    epoch = max(record.get("epoch", 0) for record in records)
    status = f"unfinished, epoch {epoch}/{config.get('train.num_epochs', '?')}"
    problem = latest_damage(run_dir)
    if problem:
        status = "latest checkpoints unreadable"
    validations = [r for r in records if r.get("kind") == "validation" and r.get("map") is not None]
    if not validations:
        return Run(workdir, config, {}, None, None, status, *pace, problem=problem)
    best = max(validations, key=lambda r: r["map"])  # the first of equal ones, as the trainer keeps them
    return Run(workdir, config, {"val mAP": best["map"]}, best["epoch"], None, status, *pace, problem=problem)


def damage(error: RunDirError) -> str:
    """'(what is wrong); what to do' of rundir's message about a damaged file."""
    return str(error).split(" is damaged ", 1)[-1]


def latest_damage(run_dir: RunDir) -> str:
    """What is wrong with each latest checkpoint when the run has some and none of them would restore
    (a resume stops there, and says what to do); '' otherwise."""
    latest = run_dir.checkpoints / "latest"
    found = [(step, checkpoint_files.damage(latest / str(step))) for step in checkpoint_files.steps(latest)]
    if not found or not all(problem for _, problem in found):
        return ""
    return "; ".join(f"step {step}: {problem}" for step, problem in found) + (
        "; a resume stops there: use a new --workdir, or move its checkpoints folder away to start it again"
    )


def training_pace(records: list[dict]) -> tuple[int | None, float | None]:
    """(training steps done, median images/s of the logged windows after the first)."""
    train = [r for r in records if r.get("kind") == "train"]
    rates = [r["images_per_second"] for r in train[1:] if r.get("images_per_second")]
    return (max((r["step"] for r in train), default=None), statistics.median(rates) if rates else None)


def noise_scale_line(workdir: str, records: list[dict]) -> str | None:
    """The run's noise scale over its last epoch: the mean of the values logged there (each is already
    smoothed over the log points before it; those still unknown are counted apart); None for a run that
    logged none (made before the noise scale was measured, or with config.train.noise_scale_parts=0)."""
    logged = [r for r in records if r.get("kind") == "train" and "noise_scale" in r]
    if not logged:
        return None
    epoch = max(r.get("epoch", 0) for r in logged)
    values = [r["noise_scale"] for r in logged if r.get("epoch", 0) == epoch]
    known = [value for value in values if value is not None]
    if not known:
        return f"noise scale of {workdir}: unknown in epoch {epoch}: {noise_scale.meaning(None)}"
    value = statistics.mean(known)
    unknown = f"; {len(values) - len(known)} more unknown" if len(known) < len(values) else ""
    return (
        f"noise scale of {workdir}: {noise_scale.text(value)} (mean of the {len(known)} value(s) logged in "
        f"epoch {epoch}{unknown}): {noise_scale.meaning(value)}"
    )


def split_fields(configs: list[dict]) -> tuple[list[str], dict]:
    """The dotted names whose values differ between the configs, and the fields common to all."""
    names = sorted({name for config in configs for name in config})
    common = {
        name: configs[0][name]
        for name in names
        if all(name in c and c[name] == configs[0][name] for c in configs)
    }
    return [name for name in names if name not in common], common


def value_text(value) -> str:
    if isinstance(value, float):  # 12 digits: a product like 3e-4 x 1e4 reads 3.0, not 2.9999999999999996
        value = float(f"{value:.12g}")
    return ("''" if value == "" else str(value)).replace("|", "\\|")


def config_cells(config: dict, fields: list[str]) -> list[str]:
    return [value_text(config[field]) if field in config else MISSING for field in fields]


def mean_std(values: list[float]) -> str:
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def score_names(runs: list[Run]) -> list[str]:
    groups = sorted({name for run in runs for name in run.scores if name.startswith("group")})
    return ["val mAP", "test mAP"] + groups


def markdown(header: list[str], rows: list[list[str]], numeric: set[str]) -> str:
    """A markdown table, padded so that it also reads in a terminal; `numeric` columns right-aligned."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]

    def line(cells):
        return (
            "| "
            + " | ".join(c.rjust(w) if h in numeric else c.ljust(w) for c, w, h in zip(cells, widths, header))
            + " |"
        )

    def rule(width, name):  # '---:' right-aligns a column
        return "-" * (width + 1) + (":" if name in numeric else "-")

    rules = "|" + "|".join(rule(w, h) for w, h in zip(widths, header)) + "|"
    return "\n".join([line(header), rules] + [line(row) for row in rows])


def with_common(table: str, common: dict) -> str:
    """The table, and under it the fields all its runs share."""
    if not common:
        return table
    return table + "\n\ncommon: " + ", ".join(f"{name}={value_text(value)}" for name, value in common.items())


def run_table(runs: list[Run]) -> str:
    """One row per run."""
    fields, common = split_fields([run.config for run in runs])
    scores = score_names(runs)
    header = ["run"] + fields + ["best epoch"] + scores + ["wall time", "status"]
    rows = []
    for run in runs:
        rows.append(
            [run.workdir]
            + config_cells(run.config, fields)
            + ["" if run.best_epoch is None else str(run.best_epoch)]
            + ["" if run.scores.get(s) is None else f"{run.scores[s]:.2f}" for s in scores]
            + ["" if run.wall_time_s is None else hms(run.wall_time_s), run.status]
        )
    return with_common(markdown(header, rows, {"best epoch", "wall time", *scores}), common)


def without_seed(config: dict) -> dict:
    return {name: value for name, value in config.items() if name != SEED}


def seed_groups(runs: list[Run]) -> list[list[Run]]:
    """Runs whose configs are equal but for the seed, in the order of their first run."""
    groups = {}
    for run in runs:
        groups.setdefault(json.dumps(without_seed(run.config), sort_keys=True, default=str), []).append(run)
    return list(groups.values())


def seed_table(runs: list[Run]) -> str:
    """One row per group of seeds: mean ± sample std of the scores of its finished runs."""
    groups = seed_groups(runs)
    fields, common = split_fields([without_seed(group[0].config) for group in groups])
    scores = score_names(runs)
    header = fields + ["seeds", "n"] + scores + ["steps", "wall time", "img/s", "status"]
    rows = []
    for group in groups:
        config, done = group[0].config, [run for run in group if run.finished]
        unfinished = [f"{run.workdir}: {run.status}" for run in group if not run.finished]
        walls = [run.wall_time_s for run in done if run.wall_time_s is not None]
        rates = [run.images_per_second for run in done if run.images_per_second]
        rows.append(
            config_cells(config, fields)
            + [",".join(value_text(run.config.get(SEED, MISSING)) for run in group), str(len(done))]
            + [mean_std([run.scores[s] for run in done if run.scores.get(s) is not None]) for s in scores]
            + [
                str(done[0].steps) if done and done[0].steps else "",
                hms(statistics.mean(walls)) if walls else "",
                f"{statistics.mean(rates):,.0f}" if rates else "",
                "; ".join(unfinished) or "finished",
            ]
        )
    return with_common(markdown(header, rows, {"n", "steps", "wall time", "img/s", *scores}), common)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bridgegap_jax.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("workdirs", nargs="+", help="workdirs of bridgegap_jax.main (local or gs://)")
    parser.add_argument(
        "--seeds",
        action="store_true",
        help="a row per group of runs that differ only in seed: mean ± sample std over its n finished runs",
    )
    args = parser.parse_args(argv)
    runs, unreadable = [], []
    for workdir in args.workdirs:
        try:
            runs.append(load_run(workdir))
        except UserError as error:
            unreadable.append(" ".join(str(error).split()))
        except OSError as error:  # no permission, a storage error
            unreadable.append(f"{workdir}: cannot be read ({error})")
    if not runs:
        print("\n".join(f"error: {line}" for line in unreadable), file=sys.stderr)
        return 2
    print(seed_table(runs) if args.seeds else run_table(runs))
    lines = [noise_scale_line(run.workdir, read_records(RunDir(run.workdir))) for run in runs]
    if any(lines):
        print("\n" + "\n".join(line for line in lines if line))
    problems = [f"{run.workdir}: {run.status}: {run.problem}" for run in runs if run.problem] + unreadable
    if problems:
        print("\n" + "\n".join(problems))
    return 0


if __name__ == "__main__":
    sys.exit(main())
