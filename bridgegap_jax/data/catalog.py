"""Which datasets exist, and the one description of a prepared dataset that the runtime passes down.

Every dataset is a tfds dataset in ArrayRecord files with splits 'train', 'validation' and 'test'
and features 'image' (encoded JPEG or PNG bytes), 'labels' (the labels evaluation scores against:
full or verified labels), 'labels_obs' (observed labels), 'index', 'image_id'. The built-in
datasets are listed here; a dataset prepared from your own folder describes itself
(`datasets/folder.py`: config.data.name `folder:NAME` or a path). `open_dataset` resolves either
once from the config; nothing downstream looks the dataset's facts up again. It is read through
tfds's TensorFlow-free data source (random access to any record), which grain's workers pickle and
open on their own.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import subprocess
import sys

import numpy as np
from etils import epath

from bridgegap_jax.base.errors import UserError
from bridgegap_jax.data import folder


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    tfds_name: str
    num_classes: int
    label_encoding: str  # 'single_positive' ({0,1}, 0 unobserved) or 'partial' ({-1,0,1}, -1 unobserved)
    downloads: str  # what the user must fetch by hand


DATASETS = {
    "demo": DatasetSpec("bridgegap_demo", 10, "single_positive", "nothing: built from scikit-learn's digits"),
    "demo_large": DatasetSpec(
        "bridgegap_demo_large", 10, "single_positive", "nothing: 8x the demo's mosaics"
    ),
    "demo_xl": DatasetSpec(
        "bridgegap_demo_xl", 10, "single_positive", "nothing: demo_large's 12,800 mosaics and more, 65,536"
    ),
    "letters": DatasetSpec(
        "bridgegap_letters", 26, "single_positive", "nothing: letters drawn with Pillow's bundled fonts"
    ),
    "voc": DatasetSpec("bridgegap_voc", 20, "single_positive", "VOCtrainval_11-May-2012.tar (VOC 2012)"),
    "coco": DatasetSpec(
        "bridgegap_coco",
        80,
        "single_positive",
        "COCO 2014 train2014/, val2014/ and annotations_trainval2014.zip",
    ),
    "nuswide": DatasetSpec(
        "bridgegap_nuswide",
        81,
        "single_positive",
        "NUS-WIDE images and the single-positive benchmark's formatted files",
    ),
    "cub": DatasetSpec("bridgegap_cub", 312, "single_positive", "CUB_200_2011.tgz"),
    "openimages": DatasetSpec(
        "bridgegap_openimages",
        5000,
        "partial",
        "OpenImages V3 (2017_11): images_2017_11, annotations_human_2017_11, classes_2017_11",
    ),
}

# Drawn when first used (by `python -m bridgegap_jax.prepare NAME`: build_built_in), nothing to download:
# digits from scikit-learn, letters.
BUILT_IN = ("demo", "demo_large", "demo_xl", "letters")

# Which stored value means "unobserved" in each label encoding.
UNOBSERVED_VALUE = {"single_positive": 0, "partial": -1}
SPLITS = ("train", "validation", "test")
# What the entries of a split's evaluation (mAP, loss) are, by mode. The built-in single-positive
# datasets have full labels ('all'), OpenImages verified ones ('observed': the mask labels != -1).
# A folder dataset stores the mode of each split (prepare/folder.py picks it from the table).
EVALUATION = {
    "all": "every label known",
    "observed": "observed labels only (unknown entries do not count)",
    "unobserved_negative": "unknown labels counted as negative (the split has no observed negative): a lower "
    "bound on the mAP with full labels",
}

# Files a prepared dataset keeps beside its tfds files.
CLASS_NAMES_FILE = "class_names.txt"  # one name per line, in label order
CLASS_GROUPS_FILE = "class_groups.npy"  # (C,) int: frequency group 1..5 of each class (OpenImages)


class DataError(UserError, ValueError):
    """A prepared dataset whose files cannot be read; the message names them and the fix."""


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A dataset that is not prepared (or prepared by an older version); the message names the command."""


def spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"config.data.name={name!r} is not one of {', '.join(DATASETS)}")
    return DATASETS[name]


def name_problem(name) -> str | None:
    """Why config.data.name cannot name a dataset (None if it can)."""
    known = (
        f"one of {', '.join(DATASETS)}, folder:NAME (a dataset prepared from your own images with `python -m "
        "bridgegap_jax.prepare folder ... --name=NAME`) or the path of a prepared folder"
    )
    if not isinstance(name, str) or not name:
        return f"is not set: give {known}"
    if name.startswith(folder.PREFIX):
        problem = folder.name_problem(name[len(folder.PREFIX) :])
        return None if problem is None else f"the NAME of folder:NAME: {problem}"
    if name in DATASETS or folder.is_folder_dataset(name):
        return None
    return f"must be {known}"


def prepare_command(name: str, data_dir: str) -> str:
    if name in BUILT_IN:
        return f"python -m bridgegap_jax.prepare {name} --data_dir={data_dir}"
    return f"python -m bridgegap_jax.prepare {name} --source=<downloads> --data_dir={data_dir}"


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A prepared dataset: where it is and everything the runtime needs to know about it."""

    name: str
    directory: str  # <data_dir>/<tfds name>/<version>
    num_classes: int
    label_encoding: str
    class_names: tuple[str, ...]
    groups: np.ndarray | None  # (C,) frequency group of each class, or None
    image_format: str  # 'jpeg' | 'png'
    split_sizes: dict
    evaluation: dict  # split -> EVALUATION mode of its mAP (validation, test)
    prepare_command: str  # the command that (re)builds it

    @property
    def unobserved_value(self) -> int:
        return UNOBSERVED_VALUE[self.label_encoding]

    def eval_mask(self, labels: np.ndarray) -> np.ndarray | None:
        """Which entries count in evaluation: partially verified labels only where observed."""
        return labels != -1 if self.label_encoding == "partial" else None

    def source(self, split: str):
        """tfds's random-access source of `split`, images left encoded (the pipeline decodes them)."""
        import tensorflow_datasets as tfds

        builder = tfds.builder_from_directory(self.directory)
        return builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})

    def damaged(self, split: str, error: Exception) -> DataError:
        """The error to raise when reading `split` failed: it names the files that do not open."""
        from array_record.python.array_record_module import ArrayRecordReader

        bad = []
        for path in sorted(epath.Path(self.directory).glob(f"*-{split}.array_record-*")):
            try:
                ArrayRecordReader(str(path)).close()
            except Exception:  # noqa: BLE001 - any failure to open is what we report
                bad.append(path.name)
        what = f"damaged file(s) {', '.join(bad)}" if bad else f"a file of split {split!r}"
        return DataError(
            f"{self.directory}: {what} cannot be read ({' '.join(str(error).split())[:200]}); "
            f"rebuild the dataset with `{self.prepare_command} --overwrite`"
        )


def open_dataset(name: str, data_dir: str) -> Dataset:
    """The prepared dataset `name` under `data_dir` (or at the path `name`), checked against its spec or
    its own description (a built-in demo builds itself)."""
    data_dir = os.path.expanduser(data_dir)
    if folder.is_folder_dataset(name):
        found, description = _locate_folder(name, data_dir)
        directory = epath.Path(found)
        num_classes, encoding = len(description["classes"]), description["label_encoding"]
        evaluation, command = description["evaluation"], description["command"]
    else:
        data_spec = spec(name)
        num_classes, encoding = data_spec.num_classes, data_spec.label_encoding
        evaluation = dict.fromkeys(
            ("validation", "test"), "all" if encoding == "single_positive" else "observed"
        )
        command = prepare_command(name, data_dir)
        root = epath.Path(data_dir) / data_spec.tfds_name
        if name in BUILT_IN and not _versions(root):
            build_built_in(name, data_dir)
        versions = _versions(root)
        if not versions:
            raise DatasetNotFoundError(
                f"dataset {name!r} is not prepared: no {root}/<version>/dataset_info.json "
                f"(config.data.data_dir={data_dir!r}). It needs {data_spec.downloads}; prepare it once with "
                f"`{command}` (docs/data.md), or point --config.data.data_dir at the folder that holds it."
            )
        directory = root / versions[-1]
    import tensorflow_datasets as tfds

    info = tfds.builder_from_directory(str(directory)).info
    if info.file_format is None or info.file_format.value != "array_record":
        raise DatasetNotFoundError(
            f"dataset {name!r} at {directory} was prepared as "
            f"{info.file_format.value if info.file_format else 'tfrecord'} "
            f"files by an older version; this one reads ArrayRecord without TensorFlow: rebuild it with "
            f"`{command} --overwrite`"
        )
    for key in ("labels", "labels_obs"):
        shape = tuple(info.features[key].shape)
        if shape != (num_classes,):
            raise ValueError(
                f"dataset {name!r} at {directory}: feature {key!r} has shape {shape}, expected "
                f"({num_classes},) for {num_classes} classes; the prepared files are not this "
                "dataset's (re-run its prepare command, or fix config.data.name / config.data.data_dir)."
            )
    missing = [split for split in SPLITS if split not in info.splits]
    if missing:
        raise ValueError(f"{directory} has no split(s) {missing}: re-run `{command} --overwrite`")
    return Dataset(
        name=name,
        directory=str(directory),
        num_classes=num_classes,
        label_encoding=encoding,
        class_names=tuple(_class_names(directory, num_classes)),
        groups=_class_groups(directory),
        image_format=info.features["image"].encoding_format or "jpeg",
        split_sizes={split: info.splits[split].num_examples for split in SPLITS},
        evaluation=evaluation,
        prepare_command=command,
    )


def build_built_in(name: str, data_dir: str) -> None:
    """Builds the built-in dataset `name` in `data_dir` with its prepare command, in a process of its
    own: the runtime never imports the offline preparation (nor the dataset writer). Its error line
    becomes this process's: a full disk stays an OSError (main names it), a folder that cannot be
    written a DataError; anything else (a crash) is raised with the command's stderr. The command runs
    in a session of its own, so that a Ctrl-C, which ends the training command at once during its
    start-up (run/stopping.py), lets the build finish (it is renamed into place only when complete)."""
    import bridgegap_jax

    package_root = os.path.dirname(os.path.dirname(os.path.abspath(bridgegap_jax.__file__)))
    paths = [package_root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    done = subprocess.run(  # the same interpreter and the same package as this process
        [sys.executable, "-m", "bridgegap_jax.prepare", name, f"--data_dir={data_dir}"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)},
        start_new_session=True,
    )
    if done.returncode == 0:
        root = epath.Path(data_dir) / spec(name).tfds_name
        print(f"built the {name} dataset in {root / _versions(root)[-1]}", flush=True)
        return
    raise built_in_failure(name, data_dir, done.stderr)


def built_in_failure(name: str, data_dir: str, stderr: str) -> Exception:
    """The error for a prepare command that failed with `stderr` (its one `error: ` line, or a traceback).
    It prints an OSError as `error: [Errno N] text: 'path'`."""
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    if not lines:
        return RuntimeError(f"building the {name} dataset failed:\n{stderr[-4000:]}")
    message = lines[-1][len("error: ") :]
    os_error = re.match(r"\[Errno (\d+)\] (.*)", message)
    if os_error and int(os_error.group(1)) == errno.ENOSPC:
        return OSError(errno.ENOSPC, "No space left on device", data_dir)
    if os_error:
        return DataError(
            f"cannot build the {name} dataset in config.data.data_dir={data_dir!r} ({os_error.group(2)}); "
            "point --config.data.data_dir at a folder you can write to"
        )
    return DataError(f"cannot build the {name} dataset in config.data.data_dir={data_dir!r}: {message}")


def _locate_folder(name: str, data_dir: str) -> tuple[str, dict]:
    """(the prepared folder, its description) of `folder:NAME` under `data_dir`, or of a path."""
    how = "python -m bridgegap_jax.prepare folder --images=DIR --labels=FILE --name=NAME --data_dir=DIR"
    if name.startswith(folder.PREFIX):
        short = name[len(folder.PREFIX) :]
        root = epath.Path(os.path.expanduser(data_dir)) / folder.tfds_name(short)
        where = f"no {root}/<version>/dataset_info.json (config.data.data_dir={data_dir!r})"
        how = how.replace("--name=NAME", f"--name={short}").replace(
            "--data_dir=DIR", f"--data_dir={data_dir}"
        )
    else:
        root = epath.Path(os.path.expanduser(name))
        where = f"no dataset_info.json in {root} or in a version folder under it"
    if (root / "dataset_info.json").is_file():
        directory = root
    else:
        versions = _versions(root)
        if not versions:
            raise DatasetNotFoundError(
                f"dataset {name!r} is not prepared: {where}. Prepare it from your images and label table with "
                f"`{how}` (docs/own_data.md), or point --config.data.data_dir at the folder that "
                "holds it"
            )
        directory = root / versions[-1]
    path = directory / folder.DESCRIPTION_FILE
    if not path.is_file():
        raise DatasetNotFoundError(
            f"{directory} is a prepared dataset but not one made by `prepare folder` (it has no "
            f"{folder.DESCRIPTION_FILE}); give a built-in dataset by its name (--config.data.name=voc, ...), or prepare your own with "
            f"`{how}`"
        )
    return str(directory), _read_description(path)


def _read_description(path: epath.Path) -> dict:
    """A folder dataset's description (folder.py), checked for what the runtime reads from it."""
    try:
        description = json.loads(path.read_text())
        classes = description["classes"]
        ok = (
            description["format"] == folder.FORMAT
            and isinstance(classes, list)
            and all(isinstance(c, str) for c in classes)
            and description["label_encoding"] in UNOBSERVED_VALUE
            and all(description["evaluation"][split] in EVALUATION for split in ("validation", "test"))
            and isinstance(description["command"], str)
        )
    except (ValueError, KeyError, TypeError) as error:
        ok, description = False, {"error": error}
    if not ok:
        raise DataError(
            f"{path} is damaged or of another version ({description.get('error', 'unexpected values')}); "
            "rebuild the dataset with the `python -m bridgegap_jax.prepare folder ... --overwrite` command that "
            "made it"
        )
    return description


def _versions(root: epath.Path) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "dataset_info.json").is_file())


def _class_names(directory: epath.Path, num_classes: int) -> list[str]:
    path = directory / CLASS_NAMES_FILE
    if path.exists():
        return path.read_text().splitlines()
    return [str(c) for c in range(num_classes)]


def _class_groups(directory: epath.Path) -> np.ndarray | None:
    path = directory / CLASS_GROUPS_FILE
    if not path.exists():
        return None
    with path.open("rb") as f:
        return np.load(f)
