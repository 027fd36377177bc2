"""A trained run as the tools see it (explain, predict, export): its stored config, its best
checkpoint (the one the test evaluates), its dataset, and the model restored from that checkpoint.

Nothing here writes: a run that is missing or has not validated an epoch yet is a RunNotFoundError
naming the command that makes or resumes it.
"""

from __future__ import annotations

import dataclasses
import json
import os

import ml_collections

from bridgegap_jax.base.errors import UserError
from bridgegap_jax.data import catalog, folder
from bridgegap_jax.run import configuration, steps
from bridgegap_jax.run.checkpoint import RunCheckpoints
from bridgegap_jax.run.rundir import CONFIG_FILE, RunDir


class RunNotFoundError(UserError, FileNotFoundError):
    """No run (or no best checkpoint) where one was given; the message names the command that makes it."""


class RunMismatchError(UserError, ValueError):
    """A run that does not fit its dataset; the message names both."""


# The stored config's fields the tools build from: the model and its input. The whole config was
# checked when the run started; these again, as config.json may come from elsewhere or be edited.
TOOL_FIELDS = ("model.", "data.image_size", "data.resize")


@dataclasses.dataclass
class Run:
    name: str | None  # the tool's label for it (explain's NAME=WORKDIR), or None
    workdir: str
    config: ml_collections.ConfigDict
    num_classes: int  # of its best checkpoint
    best_step: int
    variables: dict | None = None  # params + batch_stats, once restored


def train_command(workdir: str, dataset: str = "<dataset>") -> str:
    config = (
        "folder.py --config.data.name=" + dataset if folder.is_folder_dataset(dataset) else dataset + ".py"
    )
    return f"python -m bridgegap_jax.main --config=configs/{config} --workdir={workdir}"


def open_run(workdir: str, name: str | None = None) -> Run:
    """The run's config and class count; a clear error if the workdir or its best checkpoint is missing."""
    label = f"run {name!r}: " if name else ""
    run_dir = RunDir(workdir)  # local or gs:// workdirs
    config_path = run_dir.file(CONFIG_FILE)
    if not run_dir.path.is_dir():
        raise RunNotFoundError(
            f"{label}workdir {workdir} does not exist; make it with `{train_command(workdir)}`"
        )
    if not config_path.exists():
        raise RunNotFoundError(
            f"{label}{config_path} is missing, so {workdir} is not a training run; make one with "
            f"`{train_command(workdir)}`"
        )
    config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
    try:
        configuration.check(config, only=TOOL_FIELDS)
    except configuration.ConfigError as error:
        raise configuration.ConfigError(f"{label}{config_path}: {error}") from None
    best = run_dir.checkpoints / "best"
    step, num_classes = None, None
    if best.is_dir():
        checkpoints = RunCheckpoints(run_dir.checkpoints)
        step = checkpoints.best_step()
        if step is not None:  # the class count from the checkpoint's metadata: nothing is restored
            num_classes = int(checkpoints.best_model_metadata()["params"]["head"]["bias"].shape[0])
        checkpoints.close()
    if step is None:
        raise RunNotFoundError(
            f"{label}no best checkpoint in {best} (training has not finished a validation epoch); "
            f"train or resume it with `{train_command(workdir, config.data.name)}` and the --config.* "
            f"overrides it was started with (see {config_path})"
        )
    return Run(name, workdir, config, num_classes, step)


def open_dataset(run: Run, data_dir: str | None = None) -> catalog.Dataset:
    """The run's dataset (in `data_dir`, default the run's config.data.data_dir), checked against the run."""
    where = os.path.expanduser(data_dir or run.config.data.data_dir)
    dataset = catalog.open_dataset(run.config.data.name, where)
    if dataset.num_classes != run.num_classes:
        raise RunMismatchError(
            f"{run.workdir} has a {run.num_classes}-class checkpoint, but dataset {run.config.data.name!r} at "
            f"{dataset.directory} has {dataset.num_classes} classes: it is not the dataset the run was trained "
            "on (was it prepared again with another table?)"
        )
    return dataset


def restore(run: Run, mesh) -> tuple:
    """(model, params + batch_stats of the best checkpoint), replicated on `mesh`."""
    model = configuration.model(run.config, run.num_classes)
    abstract = steps.abstract_model_vars(model, run.config.data.image_size, mesh)
    checkpoints = RunCheckpoints(RunDir(run.workdir).checkpoints)
    try:
        variables = checkpoints.restore_best(abstract)
    finally:
        checkpoints.close()
    return model, variables
