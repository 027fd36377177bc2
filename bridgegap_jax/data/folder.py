"""Datasets prepared from your own images and label table (`python -m bridgegap_jax.prepare folder`):
how they are named, and the description each keeps in its own folder (catalog.open_dataset finds and
reads it; this module imports nothing of the package, so that the catalog can import it).

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

import re

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
