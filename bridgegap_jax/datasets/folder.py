"""Datasets prepared from your own images and label table (`python -m bridgegap_jax.prepare folder`):
how the runtime names and finds them, and the description each keeps in its own folder.

A folder dataset is prepared into <data_dir>/bridgegap_folder_<NAME>/1.0.0, like every dataset
(ArrayRecord files, class_names.txt, missing_<split>.tsv), plus splits.csv (the split of every
table row) and folder_dataset.json, written by
`prepare` and read here, so training needs no catalog entry. `config.data.name` names it
`folder:NAME` (looked up in config.data.data_dir) or by its path (that folder or its parent).

folder_dataset.json:
  format            1
  name              NAME
  classes           the class names, in label order
  label_encoding    'single_positive' (labels_obs {1, 0 unobserved}) or 'partial' ({1, 0, -1 unobserved})
  evaluation        {split: mode} for validation and test; catalog.EVALUATION says what each mode means
  splits            {split: counts of rows, images written, missing and unreadable images, and of
                    positive, negative and unknown labels}
  split_source      the table's split column, or the seeded draw (seed and fractions)
  source            the table (path, format, sha256) and the image folder
  command           the prepare command that rebuilds it (messages add --overwrite)
"""

from __future__ import annotations

import json
import os
import re

from etils import epath

PREFIX = "folder:"
TFDS_PREFIX = "bridgegap_folder_"
DESCRIPTION_FILE = "folder_dataset.json"
FORMAT = 1
NAME_RULE = "lower-case letters, digits and underscores, starting with a letter"
_NAME = re.compile(r"[a-z][a-z0-9_]*")


def is_folder_dataset(name: str) -> bool:
    """`folder:NAME`, or a path (a catalog name has no '/')."""
    return name.startswith(PREFIX) or "/" in name or name.startswith("~")


def name_problem(name: str) -> str | None:
    """Why `name` (a --name of prepare, or the NAME of folder:NAME) cannot name a dataset, or None."""
    if not _NAME.fullmatch(name):
        return f"{name!r} is not a dataset name: use {NAME_RULE} (it names the folder bridgegap_folder_NAME)"
    return None


def tfds_name(name: str) -> str:
    return TFDS_PREFIX + name


def locate(name: str, data_dir: str) -> tuple[str, dict]:
    """(the prepared folder, its description) of `folder:NAME` under `data_dir`, or of a path."""
    from bridgegap_jax.datasets.catalog import DatasetNotFoundError

    how = "python -m bridgegap_jax.prepare folder --images=DIR --labels=FILE --name=NAME --data_dir=DIR"
    if name.startswith(PREFIX):
        short = name[len(PREFIX) :]
        root = epath.Path(os.path.expanduser(data_dir)) / tfds_name(short)
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
        versions = (
            sorted(p.name for p in root.iterdir() if (p / "dataset_info.json").is_file())
            if root.is_dir()
            else []
        )
        if not versions:
            raise DatasetNotFoundError(
                f"dataset {name!r} is not prepared: {where}. Prepare it from your images and label table with "
                f"`{how}` (README, section Your own data), or point --config.data.data_dir at the folder that "
                "holds it"
            )
        directory = root / versions[-1]
    path = directory / DESCRIPTION_FILE
    if not path.is_file():
        raise DatasetNotFoundError(
            f"{directory} is a prepared dataset but not one made by `prepare folder` (it has no {DESCRIPTION_FILE}); "
            "give a built-in dataset by its name (--config.data.name=voc, ...), or prepare your own with "
            f"`{how}`"
        )
    return str(directory), read_description(path)


def read_description(path: epath.Path) -> dict:
    """The description, checked for what the runtime reads from it."""
    from bridgegap_jax.datasets.catalog import EVALUATION, UNOBSERVED_VALUE, DataError

    try:
        description = json.loads(path.read_text())
        classes = description["classes"]
        ok = (
            description["format"] == FORMAT
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
