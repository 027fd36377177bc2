r"""The paper's explanation analysis (docs/method.md, "Explanations"): the CAMs of several runs, side
by side and in numbers.

    python -m bridgegap_jax.explain \
        --run full=runs/demo_full --run AN=runs/demo_an --run LL-R+BoostLU=runs/demo \
        --reference full --split test

A run is a workdir of `python -m bridgegap_jax.main` (its config.json and best checkpoint).

Which map is shown and measured: for every model, the map whose spatial mean is its logit,
`boost_lu(cam, alpha)` at the alpha the model runs with (the paper's choice). For a model trained
with alpha = 1 that is the raw CAM. Each non-reference run trained with alpha = 1 also gets a
column "NAME + BoostLU at inference": the same parameters and raw CAM, run at --inference_alpha, so
its positive cells (and its probability) grow by alpha while its negative cells stay as they are.

Outputs, in --out (default: a new folder explain/<YYYYmmdd-HHMMSS>, which git ignores):
  cams_<n>.png: rows of ground-truth-positive (image, class) pairs; columns: the image, then each
    model's map for that class, bilinearly upsampled to the image and overlaid on it, one shared
    colour scale per row (with its colour bar), the model's predicted probability for the class in
    the panel title
  summary.json: over ALL ground-truth-positive pairs of the split, each model against the
    reference, cell by cell on the H'xW' grid: least-squares slope through the origin (model =
    slope x reference) on positive (reference > 0) and negative (reference < 0) cells, median
    per-cell ratio model / reference on both regions, per-pair Pearson correlation and top-k% IoU,
    and each model's mean attribution
  scatter.png: the cell pairs with the fitted slopes
  ratios.png: histograms of the per-cell ratio on positive and negative regions

The maps come from cam_maps.py (on the devices of this one host: the tool runs as one process).
All pairs' H'xW' maps are kept on the host for exact medians: memory grows with pairs x cells x
models (COCO at 448: a few hundred MB).
"""

from __future__ import annotations

import json
import os
import time
from typing import Sequence

import numpy as np

from bridgegap_jax.base import sharding
from bridgegap_jax.base.errors import UserError
from bridgegap_jax.data import catalog, input_pipeline
from bridgegap_jax.explain import cam_figures, cam_stats
from bridgegap_jax.explain.cam_maps import Column, RowPicker, extract_split, figure_maps
from bridgegap_jax.run.rundir import RunDir
from bridgegap_jax.run.trained_run import Run, open_run, restore

SUMMARY_FILE = "summary.json"
MEASURED_MAP = (
    "boost_lu(cam, alpha) at the alpha each model runs with: the map whose spatial mean is the logit "
    "(the raw CAM for alpha = 1 models; positive cells x alpha for BoostLU models and the "
    "'+ BoostLU at inference' columns)"
)


class ExplainError(UserError, ValueError):
    """A mistake in the runs or flags given to the tool; the message says what to do."""


# ----------------------------------------------------------------------------------------------
# Runs and the models compared
# ----------------------------------------------------------------------------------------------
def parse_runs(specs: Sequence[str]) -> list[tuple[str, str]]:
    """['full=runs/a', 'an=runs/b'] -> [('full', 'runs/a'), ('an', 'runs/b')]."""
    runs = []
    for spec in specs:
        name, sep, workdir = spec.partition("=")
        if not sep or not name or not workdir:
            raise ExplainError(f"--run {spec!r} is not NAME=WORKDIR (e.g. --run an=runs/demo_an)")
        runs.append((name, workdir))
    names = [name for name, _ in runs]
    if len(runs) < 2:
        raise ExplainError(
            f"give at least two runs to compare (--run NAME=WORKDIR, twice or more), got {len(runs)}"
        )
    if len(set(names)) != len(names):
        raise ExplainError(f"run names must differ, got {names}")
    return runs


def check_compatible(runs: Sequence[Run], dataset_classes: int) -> None:
    """Every run must predict the dataset's classes on the same CAM grid as the reference (the first)."""
    reference = runs[0]
    for run in runs:
        if run.num_classes != dataset_classes:
            raise ExplainError(
                f"run {run.name!r} ({run.workdir}) has a {run.num_classes}-class checkpoint, but dataset "
                f"{reference.config.data.name!r} has {dataset_classes} classes"
            )
        for field in ("data.name", "data.image_size"):
            section, key = field.split(".")
            if run.config[section][key] != reference.config[section][key]:
                raise ExplainError(
                    f"runs {reference.name!r} and {run.name!r} differ in config.{field} "
                    f"({reference.config[section][key]!r} vs {run.config[section][key]!r}); compare runs of one "
                    "dataset and input size"
                )


def make_columns(runs: Sequence[Run], inference_alpha: float) -> list[Column]:
    """Each run as trained; plus '+ BoostLU at inference' for non-reference runs trained with alpha = 1."""
    columns = []
    for i, run in enumerate(runs):
        alpha = float(run.config.model.alpha)
        columns.append(Column(run.name, run.name, alpha))
        if i > 0 and alpha == 1.0 and inference_alpha != 1.0:
            columns.append(Column(f"{run.name} + BoostLU at inference", run.name, float(inference_alpha)))
    return columns


def resolve_classes(requested: Sequence[str], names: Sequence[str]) -> list[int]:
    """Class names (or indices) -> indices; an unknown one is an error listing the valid ones."""
    ids = []
    for item in requested:
        if item in names:
            ids.append(names.index(item))
        elif item.isdigit() and int(item) < len(names):
            ids.append(int(item))
        else:
            shown = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
            raise ExplainError(
                f"class {item!r} not found; classes are: {shown} (or an index 0..{len(names) - 1})"
            )
    return ids


# ----------------------------------------------------------------------------------------------
# The tool
# ----------------------------------------------------------------------------------------------
def explain(
    run_specs: Sequence[tuple[str, str]],
    out: str,
    *,
    reference: str | None = None,
    split: str = "test",
    inference_alpha: float = 5.0,
    top_k_percent: float = 20.0,
    classes: Sequence[str] = (),
    image_ids: Sequence[int] = (),
    num_rows: int = 8,
    rows_per_figure: int = 4,
    seed: int = 0,
    data_dir: str | None = None,
    workers: int = 0,
) -> dict:
    """Figures and summary.json for runs [(name, workdir)], compared with `reference`; returns the summary."""
    names = [name for name, _ in run_specs]
    reference = reference or names[0]
    if reference not in names:
        raise ExplainError(f"--reference {reference!r} is not one of the runs {names}")
    if not 0 < top_k_percent <= 100:
        raise ExplainError(f"--top_k_percent={top_k_percent} must lie in (0, 100]")
    runs = [open_run(workdir, name) for name, workdir in run_specs]
    runs.sort(key=lambda run: run.name != reference)  # the reference first
    config = runs[0].config
    dataset = catalog.open_dataset(config.data.name, os.path.expanduser(data_dir or config.data.data_dir))
    check_compatible(runs, dataset.num_classes)
    class_list = list(dataset.class_names)  # names where the dataset has them, else indices
    class_filter = resolve_classes(classes, class_list)
    if split not in dataset.split_sizes:
        raise ExplainError(
            f"--split={split!r} is not one of the dataset's splits {sorted(dataset.split_sizes)}"
        )
    num_examples = dataset.split_sizes[split]
    outside = [i for i in image_ids if not 0 <= i < num_examples]
    if outside:
        raise ExplainError(
            f"--image_ids {outside} are not in split {split!r}, whose images are 0..{num_examples - 1}"
        )

    mesh = sharding.make_mesh()
    batch_size = config.train.eval_batch_size
    if batch_size % mesh.size:
        raise ExplainError(
            f"config.train.eval_batch_size={batch_size} of run "
            f"{reference!r} is not divisible by the {mesh.size} devices"
        )
    models = {}
    for run in runs:
        models[run.name], run.variables = restore(run, mesh)
    columns = make_columns(runs, inference_alpha)

    picker = RowPicker(num_rows, seed, class_filter, image_ids)
    options = input_pipeline.Options(
        image_size=config.data.image_size,
        batch_size=batch_size,
        eval_batch_size=batch_size,
        resize=config.data.get("resize", "bilinear"),
    )
    reader = input_pipeline.BatchReader(dataset, input_pipeline.eval_plan(dataset, split, options), options)
    with input_pipeline.Stream(reader, workers=workers) as batches:
        extracted = extract_split(runs, models, columns, batches, mesh, picker)
    if extracted is None:
        raise ExplainError("the split is empty: there is nothing to explain")
    maps, probs, num_images, grid = extracted

    os.makedirs(out, exist_ok=True)
    figures = write_figures(
        out, runs, models, columns, picker.picked(), mesh, config.data.image_size, class_list, rows_per_figure
    )
    summary = {
        "dataset": config.data.name,
        "split": split,
        "num_images": num_images,
        "num_positive_pairs": int(len(probs[reference])),
        "cam_grid": list(grid),
        "measured_map": MEASURED_MAP,
        "reference": reference,
        "inference_alpha": inference_alpha,
        "top_k_percent": top_k_percent,
        "runs": {run.name: _run_info(run) for run in runs},
        "models": cam_stats.summarize(columns, maps, probs, reference, top_k_percent),
        "figures": figures,
    }
    cam_figures.draw_scatter(os.path.join(out, "scatter.png"), columns, maps, summary["models"], reference)
    cam_figures.draw_ratio_histograms(os.path.join(out, "ratios.png"), columns, maps, reference)
    with open(os.path.join(out, SUMMARY_FILE), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def write_figures(out, runs, models, columns, picked, mesh, image_size, names, rows_per_figure) -> list[dict]:
    """cams_<n>.png of `rows_per_figure` rows each; returns [{'file', 'rows': [{'image', 'class'}]}]."""
    if not picked:
        print("no ground-truth-positive pair matches --classes / --image_ids: no CAM figure written")
        return []
    maps, probs = figure_maps(runs, models, columns, picked, mesh, image_size)
    files = []
    for start in range(0, len(picked), rows_per_figure):
        part = slice(start, start + rows_per_figure)
        name = f"cams_{start // rows_per_figure + 1}.png"
        images = np.stack([image for _, _, image in picked[part]])
        rows = [(i, c) for i, c, _ in picked[part]]
        cam_figures.draw_cam_figure(
            os.path.join(out, name), images, rows, maps[part], probs[part], columns, names
        )
        files.append({"file": name, "rows": [{"image": i, "class": names[c]} for i, c in rows]})
    return files


def _run_info(run: Run) -> dict:
    info = {
        "workdir": run.workdir,
        "alpha": float(run.config.model.alpha),
        "scheme": run.config.loss.scheme,
        "train_labels": run.config.data.train_labels,
    }
    result = RunDir(run.workdir).result()
    if result is not None:
        info["test_map"] = result["test_map"]
    return info


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def default_out() -> str:
    """A new folder per invocation (ignored by git): the default writes over nothing."""
    return os.path.join("explain", time.strftime("%Y%m%d-%H%M%S"))


def main(argv):
    import sys

    from absl import app, flags, logging

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.ERROR)  # orbax logs every file it reads
    f = flags.FLAGS
    try:
        image_ids = [int(i) for i in f.image_ids]
    except ValueError:
        raise app.UsageError(f"--image_ids must be integers (indices in the split), got {f.image_ids}")
    out = f.out or default_out()
    try:
        summary = explain(
            parse_runs(f.run),
            out,
            reference=f.reference,
            split=f.split,
            inference_alpha=f.inference_alpha,
            top_k_percent=f.top_k_percent,
            classes=f.classes,
            image_ids=image_ids,
            num_rows=f.num_rows,
            rows_per_figure=f.rows_per_figure,
            seed=f.seed,
            data_dir=f.data_dir,
        )
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(format_summary(summary))
    print(
        f"wrote {SUMMARY_FILE}, scatter.png, ratios.png and {len(summary['figures'])} CAM figure(s) to {out}"
    )


def format_summary(summary: dict) -> str:
    """A short table of the headline numbers."""
    lines = [
        f"{summary['dataset']} {summary['split']}: {summary['num_positive_pairs']} ground-truth-positive pairs, "
        f"CAM grid {summary['cam_grid']}, reference {summary['reference']!r}",
        f"{'model':34s} {'mean+attr':>9s} {'mean p':>7s} {'slope+':>7s} "
        f"{'slope-':>7s} {'ratio+':>7s} {'ratio-':>7s} {'pearson':>7s} {'IoU':>6s}",
    ]
    for name, m in summary["models"].items():
        v = m.get("vs_reference")
        iou = next((value for key, value in v.items() if key.endswith("_iou_mean")), None) if v else None
        compared = (
            f" {v['slope_positive_cells']:7.3f} {v['slope_negative_cells']:7.3f} "
            f"{v['median_ratio_positive_cells']:7.3f}"
            f" {v['median_ratio_negative_cells']:7.3f} {v['pearson_mean']:7.3f} {iou:6.3f}"
            if v
            else "  (reference)"
        )
        lines.append(
            f"{name:34s} {m['mean_positive_cell_attribution']:9.3f} {m['mean_probability']:7.3f}{compared}"
        )
    return "\n".join(lines)
