r"""`python -m bridgegap_jax.prepare folder`: a dataset from your own images and a label table.

    python -m bridgegap_jax.prepare folder --images=DIR --labels=FILE --name=NAME --data_dir=DATA

The table (prepare/table.py) names each image by its path under --images. Without --labels, the
metadata.jsonl or metadata.csv in --images is the table, as for Hugging Face's imagefolder (both
there: an error that names them). This module picks each
image's split, the label encoding and each split's evaluation, then writes the dataset with the
writer of every dataset (a missing or unreadable image is skipped and listed in
missing_<split>.tsv) into DATA/bridgegap_folder_NAME/1.0.0, beside the files with which it
describes itself (datasets/folder.py): folder_dataset.json, class_names.txt and splits.csv.

Splits: the table's split column, else a seeded draw with --validation_fraction and
--test_fraction. The draw ranks the images by a hash of (--split_seed, file name), so it depends on
neither the row order nor the other rows, and splits.csv stores it: a rebuild (--overwrite) with the
same seed and fractions keeps the split of every image it had before and draws only the new ones,
so adding images to the table never moves an image between train and test.

Label encoding, from the table: every row exactly one positive and no negative -> 'single_positive'
(labels_obs 1 / 0 unobserved, as the single-positive benchmarks); otherwise 'partial' (1 / 0 /
-1 unobserved, as OpenImages). Training assumes unknown labels negative either way.

Evaluation of each of validation and test (catalog.EVALUATION), from its own rows:
  'all'                  every label known: every entry counts;
  'observed'             some unknown: only known entries count (as OpenImages);
  'unobserved_negative'  no known negative in the split (one positive per row, say): observed-only
                         AP would be 100 for every class whatever the model predicts, so unknown
                         entries count as negatives instead, a lower bound on the full-label mAP.
The stored 'labels' of a split are what its evaluation scores against (unknown -> 0 for
'unobserved_negative'); the table keeps the truth.
"""

from __future__ import annotations

import collections
import csv
import hashlib
import json
import os
import shlex

import numpy as np

from bridgegap_jax.base.errors import UserError
from bridgegap_jax.base.files import sha256
from bridgegap_jax.data import catalog, folder
from bridgegap_jax.prepare import table as tables
from bridgegap_jax.prepare import writer

SPLIT_FILE = "splits.csv"  # file_name,split of every table row: the stored split
METADATA_FILES = ("metadata.jsonl", "metadata.csv")  # imagefolder's tables, found in --images
DEFAULT_FRACTION = 0.1  # of the images, each for validation and test, in a seeded split


def read_class_names(path: str) -> list[str]:
    """--class_names: one name per line, in label order."""
    try:
        with open(os.path.expanduser(path), encoding="utf-8-sig") as f:
            names = [line.strip() for line in f if line.strip()]
    except OSError as error:
        raise UserError(f"--class_names={path} cannot be read ({error.strerror})") from None
    repeated = sorted(name for name, count in collections.Counter(names).items() if count > 1)
    if repeated or not names:
        raise UserError(f"--class_names={path}: {'repeats ' + repr(repeated[0]) if repeated else 'no names'}")
    return names


def _count(fraction: float, total: int) -> int:
    return 0 if fraction == 0 else max(1, round(fraction * total))


def seeded_splits(
    file_names: list[str], seed: int, validation_fraction: float, test_fraction: float, stored: dict
) -> list[str]:
    """Each image's split: its `stored` one if it has one; the new ones ranked by a hash of (seed, file
    name) fill test, then validation, up to their fractions of all images, and the rest is train."""
    split = [stored.get(name) for name in file_names]
    new = sorted(
        (i for i, s in enumerate(split) if s is None),
        key=lambda i: hashlib.sha256(f"{seed}\0{file_names[i]}".encode()).digest(),
    )
    have = collections.Counter(s for s in split if s is not None)
    start = 0
    for name, fraction in (("test", test_fraction), ("validation", validation_fraction)):
        take = max(0, _count(fraction, len(file_names)) - have[name])
        for i in new[start : start + take]:
            split[i] = name
        start += take
    for i in new[start:]:
        split[i] = "train"
    return split


def stored_splits(directory: str, source: dict) -> dict:
    """{file name: split} of the dataset already in `directory`, if its seeded split had `source`'s
    seed and fractions (else {}: other settings draw anew)."""
    try:
        with open(os.path.join(directory, folder.DESCRIPTION_FILE)) as f:
            if json.load(f).get("split_source") != source:
                return {}
        with open(os.path.join(directory, SPLIT_FILE), newline="", encoding="utf-8") as f:
            return {row["file_name"]: row["split"] for row in csv.DictReader(f)}
    except (OSError, ValueError, KeyError):
        return {}


def evaluation_mode(labels: np.ndarray) -> str:
    """catalog.EVALUATION mode of a split whose table labels (1 / 0 / -1 unknown) are `labels`."""
    if not (labels == tables.UNKNOWN).any():
        return "all"
    return "observed" if (labels == 0).any() else "unobserved_negative"


def metadata_file(images: str) -> str:
    """The table in the image folder `images` (--images as given) when --labels is not given."""
    found = [
        name for name in METADATA_FILES if os.path.isfile(os.path.join(os.path.expanduser(images), name))
    ]
    if len(found) > 1:
        raise UserError(
            f"--images={images} holds both {' and '.join(found)}: name the table to read with "
            f"--labels={os.path.join(images, found[0])}"
        )
    if not found:
        raise UserError(
            f"prepare folder needs --labels, or a {' or '.join(METADATA_FILES)} in --images={images} "
            "(docs/own_data.md)"
        )
    return os.path.join(images, found[0])


def check_args(args) -> None:
    """Checks the flags; without --labels, sets it to the metadata file of --images."""
    if args.source:
        raise UserError("prepare folder reads --images and --labels, not --source")
    for flag, value in (("--images", args.images), ("--name", args.folder_name)):
        if not value:
            raise UserError(f"prepare folder needs {flag} (docs/own_data.md)")
    problem = folder.name_problem(args.folder_name)
    if problem:
        raise UserError(f"--name={args.folder_name}: {problem}")
    if not os.path.isdir(os.path.expanduser(args.images)):
        raise UserError(f"--images={args.images} is not a folder")
    if not args.labels:
        args.labels = metadata_file(args.images)
    if not os.path.isfile(os.path.expanduser(args.labels)):
        raise UserError(f"--labels={args.labels} is not a file")
    for flag, value in (
        ("--validation_fraction", args.validation_fraction),
        ("--test_fraction", args.test_fraction),
    ):
        if value is not None and not 0 <= value < 1:
            raise UserError(f"{flag}={value} must be in [0, 1)")


def command(args) -> str:
    """The command that rebuilds this dataset (messages add --overwrite)."""
    parts = ["python -m bridgegap_jax.prepare folder"]
    for flag, value in (
        ("images", os.path.abspath(os.path.expanduser(args.images))),
        ("labels", os.path.abspath(os.path.expanduser(args.labels))),
        ("name", args.folder_name),
        (
            "data_dir",
            args.data_dir if "://" in args.data_dir else os.path.abspath(os.path.expanduser(args.data_dir)),
        ),
        ("class_names", args.class_names and os.path.abspath(os.path.expanduser(args.class_names))),
        ("label_separator", args.label_separator),
        ("split_seed", args.split_seed),
        ("validation_fraction", args.validation_fraction),
        ("test_fraction", args.test_fraction),
        ("max_short_side", args.max_short_side),
    ):
        if value is not None:
            parts.append(f"--{flag}={shlex.quote(str(value))}")
    return " ".join(parts)


def prepare(args) -> str:
    """Builds the dataset; returns its folder."""
    found = not args.labels
    check_args(args)
    if found:
        print(f"no --labels: reading {args.labels}, the metadata file of --images", flush=True)
    class_names = read_class_names(args.class_names) if args.class_names else None
    table = tables.read_table(
        args.labels, class_names, args.label_separator, images=os.path.expanduser(args.images)
    )
    name = args.folder_name
    final = writer.dataset_dir(args.data_dir, folder.tfds_name(name))
    if os.path.exists(final) and not args.overwrite:
        raise UserError(
            f"{final} already exists; pass --overwrite to rebuild it (the old one stays until the new one is "
            "complete)"
        )
    splits, split_source = assign_splits(table, args, final)
    rows = split_rows(table, splits)
    encoding, labels_obs, scored, evaluation = encode(table.labels, rows)
    describe(table, encoding, evaluation, rows, split_source)

    images = os.path.expanduser(args.images)
    sources = {
        split: writer.SplitSource(
            image_ids=[table.file_names[r] for r in index],
            paths=[os.path.join(images, *table.file_names[r].split("/")) for r in index],
            labels=lambda i, index=index: (scored[index[i]], labels_obs[index[i]]),
        )
        for split, index in rows.items()
    }
    description = {
        "format": folder.FORMAT,
        "name": name,
        "classes": table.classes,
        "label_encoding": encoding,
        "evaluation": evaluation,
        "split_source": split_source,
        "source": {
            "labels": os.path.abspath(os.path.expanduser(args.labels)),
            "labels_format": table.format,
            "labels_layout": tables.LAYOUTS[table.layout],
            "labels_sha256": sha256(os.path.expanduser(args.labels)),
            "images": os.path.abspath(images),
        },
        "command": command(args),
    }

    def finish(directory, results):
        with open(os.path.join(directory, catalog.CLASS_NAMES_FILE), "w", encoding="utf-8") as f:
            f.writelines(f"{c}\n" for c in table.classes)
        with open(os.path.join(directory, SPLIT_FILE), "w", newline="", encoding="utf-8") as f:
            out = csv.writer(f)
            out.writerow(["file_name", "split"])
            out.writerows(zip(table.file_names, splits))
        description["splits"] = {split: counts(table.labels[rows[split]], results[split]) for split in rows}
        with open(os.path.join(directory, folder.DESCRIPTION_FILE), "w", encoding="utf-8") as f:
            json.dump(description, f, indent=2)

    directory, _ = writer.write_dataset(
        args.data_dir,
        folder.tfds_name(name),
        sources,
        num_classes=len(table.classes),
        compress_labels=len(table.classes) >= 1000,  # mostly -1 at OpenImages' scale: zlib shrinks them
        description=f"{name}: prepared from {args.labels} and the images in {args.images}",
        max_short_side=args.max_short_side or None,
        workers=args.workers,
        overwrite=args.overwrite,
        finish=finish,
    )
    return directory


def split_rows(table: tables.Table, splits: list[str]) -> dict[str, np.ndarray]:
    """{split: its rows of the table}; every split must have rows, and positives among them."""
    rows = {split: np.flatnonzero(np.asarray(splits) == split) for split in catalog.SPLITS}
    for split, index in rows.items():
        if not len(index):
            how = (
                f"column {tables.SPLIT_COLUMN!r} puts no row"
                if table.splits
                else "the seeded split puts no image"
            )
            hint = "" if table.splits else f" (raise --{split}_fraction, or list more images)"
            raise UserError(
                f"{table.path}: {how} in {split!r}: training needs images in train, validation and test{hint}"
            )
        if not (table.labels[index] == 1).any():
            raise UserError(
                f"{table.path}: split {split!r} ({len(index)} images) has no positive label, so nothing to "
                "learn or score there"
            )
    return rows


def encode(labels: np.ndarray, rows: dict) -> tuple[str, np.ndarray, np.ndarray, dict]:
    """(label encoding, labels_obs, the 'labels' that evaluation scores against, {split: evaluation mode})
    from the table's labels (1 / 0 / -1 unknown)."""
    single = bool(((labels == 1).sum(1) == 1).all() and not (labels == 0).any())
    encoding = "single_positive" if single else "partial"
    labels_obs = (labels == 1).astype(np.int8) if single else labels
    evaluation = {split: evaluation_mode(labels[rows[split]]) for split in ("validation", "test")}
    scored = labels_obs.copy()
    for split, mode in evaluation.items():
        if mode == "unobserved_negative":  # unknown -> 0: counted as a negative
            scored[rows[split]] = np.maximum(scored[rows[split]], 0)
    return encoding, labels_obs, scored, evaluation


def assign_splits(table: tables.Table, args, final: str) -> tuple[list[str], dict]:
    """(each image's split, how they were chosen)."""
    fractions = (args.validation_fraction, args.test_fraction)
    if table.splits is not None:
        if fractions != (None, None) or args.split_seed is not None:
            raise UserError(
                f"{table.path} has a {tables.SPLIT_COLUMN} column: --validation_fraction, --test_fraction "
                "and --split_seed apply only to a table without one"
            )
        return table.splits, {"kind": f"the table's {tables.SPLIT_COLUMN} column"}
    validation, test = (DEFAULT_FRACTION if f is None else f for f in fractions)
    seed = 0 if args.split_seed is None else args.split_seed
    if validation + test >= 1:
        raise UserError(
            f"--validation_fraction={validation} and --test_fraction={test} leave no training images"
        )
    source = {
        "kind": f"a draw with seed {seed}",
        "seed": seed,
        "validation_fraction": validation,
        "test_fraction": test,
    }
    stored = stored_splits(final, source) if args.overwrite else {}
    splits = seeded_splits(table.file_names, seed, validation, test, stored)
    kept = sum(name in stored for name in table.file_names)
    if kept:
        print(
            f"kept the stored split of {kept} image(s) of {final}; drew {len(splits) - kept} new", flush=True
        )
    return splits, source


def counts(labels: np.ndarray, result: writer.SplitResult) -> dict:
    statuses = collections.Counter(status for _, status, _ in result.missing)
    return {
        "rows": len(labels),
        "images": len(result.kept),
        "missing": statuses["missing"],
        "unreadable": statuses["unreadable"],
        "positive_labels": int((labels == 1).sum()),
        "negative_labels": int((labels == 0).sum()),
        "unknown_labels": int((labels == tables.UNKNOWN).sum()),
    }


def describe(table: tables.Table, encoding: str, evaluation: dict, rows: dict, split_source: dict) -> None:
    """What the table became, in a few lines, before the images are read."""
    known = table.labels != tables.UNKNOWN
    merged = f" ({table.merged} repeated rows merged)" if table.merged else ""
    ignored = f"; ignored column(s): {', '.join(table.ignored_columns)}" if table.ignored_columns else ""
    print(
        f"{table.path}: {len(table.file_names)} images{merged}, {len(table.classes)} classes "
        f"({tables.LAYOUTS[table.layout]}){ignored}; splits from {split_source['kind']}: "
        + ", ".join(f"{split} {len(index)}" for split, index in rows.items()),
        flush=True,
    )
    kind = "one positive per image, no negative" if encoding == "single_positive" else "1, 0 or unknown"
    print(
        f"label encoding: {encoding} ({kind}); {100 * (1 - known.mean()):.1f}% of the labels unknown, which "
        "training assumes negative",
        flush=True,
    )
    if table.windows_paths:
        written, read = table.windows_paths[0]
        print(
            f"note: {len(table.windows_paths)} file_name(s) written with Windows backslashes, read with '/' "
            f"({written} as {read})",
            flush=True,
        )
    learnable = (table.labels[rows["train"]] == 1).any(0)
    unlearnable = [c for c, ok in zip(table.classes, learnable) if not ok]
    if unlearnable:
        print(
            f"note: {len(unlearnable)} class(es) without a positive in train, which the model cannot learn: "
            f"{', '.join(unlearnable[:5])}{' ...' if len(unlearnable) > 5 else ''}",
            flush=True,
        )
    for split, mode in evaluation.items():
        labels = table.labels[rows[split]]
        notes = []
        absent = int((~(labels == 1).any(0)).sum())
        if absent:
            notes.append(
                f"{absent} class(es) without a positive (AP 0 in the mAP; dropped from the other mAP)"
            )
        if mode == "observed":
            free = int(((labels == 1).any(0) & ~(labels == 0).any(0)).sum())
            if free:
                notes.append(
                    f"{free} class(es) with positives but no known negative (their observed-only AP is 100 "
                    "whatever the model predicts)"
                )
        print(
            f"{split}: evaluation on {catalog.EVALUATION[mode]}" + "".join(f"; {n}" for n in notes),
            flush=True,
        )
