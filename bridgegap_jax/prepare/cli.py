r"""Prepare a dataset once from its official downloads into a tfds folder that training reads.

    python -m bridgegap_jax.prepare <voc|coco|cub|nuswide|openimages> \
        --source=<downloads> --data_dir=<tfds data_dir> [--workers=N] [--overwrite]
    python -m bridgegap_jax.prepare <voc|coco|cub|nuswide> \
        --source=<folder with formatted_*_{images,labels}.npy> --images=<image root>
    python -m bridgegap_jax.prepare <demo|demo_large|demo_xl|letters> --data_dir=<tfds data_dir>
    python -m bridgegap_jax.prepare folder --images=<image folder> --labels=<table .csv|.tsv|.jsonl> \
        --name=<NAME> --data_dir=<tfds data_dir>
        (your own data: prepare/folder.py, prepare/table.py)

Writes <data_dir>/bridgegap_<name>/1.0.0/ (folder: bridgegap_folder_<NAME>/1.0.0/): ArrayRecord
files (splits train / validation / test), class_names.txt, missing_<split>.tsv (rows whose image is
missing or unreadable: skipped, listed, counted), and for OpenImages class_frequency.tsv and
class_groups.npy; for the single-positive datasets file_rows_<split>.npy (the row of each example in
its formatted file); for a folder folder_dataset.json (its description) and splits.csv.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from bridgegap_jax.base.errors import ArgumentParser, UserError
from bridgegap_jax.data import catalog
from bridgegap_jax.data.folder import NAME_RULE
from bridgegap_jax.prepare import built_in, formatted, openimages, single_positive, writer
from bridgegap_jax.prepare import folder as own_data
from bridgegap_jax.prepare.observation import observe_single_positive

READERS = {"voc": formatted.read_voc, "coco": formatted.read_coco, "cub": formatted.read_cub}
OPENIMAGES_SHORT_SIDE = 512  # stored OpenImages size: keeps the 448 input, cuts the stream ~10x


def _write_lines(path: str, lines) -> None:
    with open(path, "w") as f:
        f.writelines(f"{line}\n" for line in lines)


def _class_names(path: str | None, source: str, num_classes: int) -> list[str] | None:
    candidates = (
        [path] if path else [os.path.join(source, n) for n in (catalog.CLASS_NAMES_FILE, "Concepts81.txt")]
    )
    for p in candidates:
        if p and os.path.exists(p):
            with open(p) as f:
                names = [line.strip() for line in f if line.strip()]
            if len(names) != num_classes:
                raise ValueError(f"{p} lists {len(names)} class names, expected {num_classes}")
            return names
    if path:
        raise FileNotFoundError(f"--class_names={path} not found")
    return None


def prepare_single_positive(name: str, args) -> str:
    spec = catalog.spec(name)
    if formatted.is_formatted(args.source):
        image_root = args.images or next(
            (
                os.path.join(args.source, d)
                for d in ("Flickr", "images", "JPEGImages")
                if os.path.isdir(os.path.join(args.source, d))
            ),
            None,
        )
        if image_root is None:
            raise FileNotFoundError(
                f"--source={args.source} is a formatted-npy folder: give --images=<the folder its "
                "formatted_*_images.npy paths are relative to>"
            )
        data = formatted.read_formatted(
            args.source,
            image_root,
            spec.num_classes,
            _class_names(args.class_names, args.source, spec.num_classes),
        )
        for phase, stored in data.labels_obs.items():
            same = np.array_equal(stored, observe_single_positive(data.labels[phase]))
            print(
                f"formatted_{phase}_labels_obs.npy used as stored; equal to the benchmark's seeded generator: {same}"
            )
    elif name in READERS:
        data = READERS[name](args.source)
        if args.images:
            data.image_root = args.images
    else:
        raise FileNotFoundError(
            f"--source={args.source} has no formatted_train_labels.npy; {name} is read from the "
            "benchmark's formatted files (formatted_{train,val}_{images,labels}.npy) plus --images"
        )
    num_classes = data.labels["train"].shape[1]
    if num_classes != spec.num_classes:
        raise ValueError(f"{args.source}: {num_classes} classes, but {name} has {spec.num_classes}")
    parts = single_positive.splits(data)
    sources = {
        split: writer.SplitSource(
            image_ids=[str(p) for p in part["images"]],
            paths=[os.path.join(data.image_root, str(p)) for p in part["images"]],
            labels=lambda r, part=part: (part["labels"][r], part["labels_obs"][r]),
        )
        for split, part in parts.items()
    }

    def finish(folder, results):
        _write_lines(os.path.join(folder, catalog.CLASS_NAMES_FILE), data.class_names)
        for split, result in results.items():
            np.save(os.path.join(folder, f"file_rows_{split}.npy"), parts[split]["file_rows"][result.kept])

    folder, _ = writer.write_dataset(
        args.data_dir,
        spec.tfds_name,
        sources,
        num_classes=num_classes,
        compress_labels=False,
        description=f"{name}: single-positive benchmark rows, prepared from {args.source}",
        max_short_side=args.max_short_side or None,
        workers=args.workers,
        overwrite=args.overwrite,
        finish=finish,
    )
    return folder


def prepare_openimages(args) -> str:
    from bridgegap_jax.run import metrics

    spec = catalog.spec("openimages")
    mids, names = openimages.read_classes(args.source)
    if len(mids) != spec.num_classes:
        raise ValueError(
            f"{args.source}/classes-trainable.txt lists {len(mids)} classes, expected {spec.num_classes}"
        )
    labels, sources = {}, {}
    for split in openimages.SPLITS:
        labels[split] = lab = openimages.read_split(
            os.path.join(args.source, split, "annotations-human.csv"), mids
        )
        print(
            f"openimages {split}: {len(lab.image_ids)} images, {len(lab.vals)} verified labels "
            f"({int((lab.vals == 1).sum())} positive) on trainable classes, {lab.other_labels} on other classes, "
            f"{lab.conflicts} pairs verified both ways (kept positive)",
            flush=True,
        )
        sources[split] = writer.SplitSource(
            image_ids=lab.image_ids,
            paths=[openimages.image_path(args.source, split, i) for i in lab.image_ids],
            labels=lambda r, lab=lab: (lab.row(r),) * 2,  # the partial labels are the observation
        )

    def finish(folder, results):
        train = labels["train"]
        counts = train.positive_counts(results["train"].kept)
        _write_lines(os.path.join(folder, catalog.CLASS_NAMES_FILE), names)
        openimages.frequency_table(
            os.path.join(folder, "class_frequency.tsv"), mids, names, counts, train.positive_counts()
        )
        np.save(os.path.join(folder, catalog.CLASS_GROUPS_FILE), metrics.frequency_groups(counts, 5))

    short_side = OPENIMAGES_SHORT_SIDE if args.max_short_side is None else (args.max_short_side or None)
    folder, _ = writer.write_dataset(
        args.data_dir,
        spec.tfds_name,
        sources,
        num_classes=len(mids),
        compress_labels=True,
        description=f"OpenImages V3 (2017_11) human-verified labels, 5,000 trainable classes, from {args.source}",
        max_short_side=short_side,
        workers=args.workers,
        overwrite=args.overwrite,
        finish=finish,
    )
    return folder


def parse_args(argv):
    parser = ArgumentParser(
        prog="python -m bridgegap_jax.prepare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", choices=[*catalog.DATASETS, "folder"])
    parser.add_argument(
        "--source", help="the downloads (official layout) or a formatted-npy folder (not for demo, folder)"
    )
    parser.add_argument("--data_dir", required=True, help="tfds data_dir (config.data.data_dir)")
    parser.add_argument(
        "--images",
        help="folder: the image folder (the table's file_name paths are relative to it); formatted-npy "
        "--source: the image root its formatted_*_images.npy paths are relative to",
    )
    parser.add_argument(
        "--class_names",
        help="file with one class name per line (NUS-WIDE: Concepts81.txt; folder: fixes the classes and "
        "their order, default: the table's)",
    )
    parser.add_argument(
        "--labels",
        help="folder: the label table, .csv, .tsv or .jsonl (docs/own_data.md); default: the "
        "metadata.jsonl or metadata.csv in --images",
    )
    parser.add_argument(
        "--name",
        dest="folder_name",
        help=f"folder: the dataset's name ({NAME_RULE}); train it with --config.data.name=folder:NAME",
    )
    parser.add_argument(
        "--label_separator",
        default=None,
        help="folder: between the class names of a labels cell (default '|', and names that look joined "
        "by ';', ',' or '/' are an error that says so)",
    )
    parser.add_argument(
        "--validation_fraction",
        type=float,
        default=None,
        help="folder, table without a split column: validation's share of the images "
        f"(default {own_data.DEFAULT_FRACTION})",
    )
    parser.add_argument(
        "--test_fraction",
        type=float,
        default=None,
        help="folder, table without a split column: test's share of the images "
        f"(default {own_data.DEFAULT_FRACTION})",
    )
    parser.add_argument(
        "--split_seed",
        type=int,
        default=None,
        help="folder, table without a split column: seed of the split (default 0)",
    )
    parser.add_argument(
        "--workers", type=int, default=writer.default_workers(), help="image decoding processes"
    )
    parser.add_argument(
        "--max_short_side",
        type=int,
        default=None,
        help=f"re-encode images with a longer shorter side (default: {OPENIMAGES_SHORT_SIDE} for "
        "openimages, keep the original bytes for the others; 0 = keep)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="rebuild an existing prepared dataset (the old one is replaced only once the new one is "
        "complete)",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return parser.parse_args(argv)


FOLDER_ONLY = (
    "labels",
    "folder_name",
    "label_separator",
    "validation_fraction",
    "test_fraction",
    "split_seed",
)


def prepare(args) -> str:
    """Builds the dataset; returns its folder."""
    if args.name == "folder":
        return own_data.prepare(args)
    given = [f"--{'name' if f == 'folder_name' else f}" for f in FOLDER_ONLY if getattr(args, f) is not None]
    if given:
        raise UserError(f"{', '.join(given)} only apply to `prepare folder`")
    if args.name in catalog.BUILT_IN:
        return built_in.build(args.data_dir, args.name, overwrite=args.overwrite)
    if not args.source:
        raise UserError(f"{args.name} is prepared from its downloads: give --source=<folder> (docs/data.md)")
    args.source = os.path.expanduser(args.source)
    if not os.path.isdir(args.source):
        raise UserError(f"--source={args.source} is not a folder")
    if args.name == "openimages":
        return prepare_openimages(args)
    return prepare_single_positive(args.name, args)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        directory = prepare(args)
    except (UserError, OSError, ValueError) as error:  # the downloads or the flags: one line, no traceback
        if args.debug:
            raise
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    name = f"folder:{args.folder_name}" if args.name == "folder" else args.name
    config = f"folder.py --config.data.name={name}" if args.name == "folder" else f"{args.name}.py"
    print(
        f"prepared {name} in {directory}; train with --config=configs/{config} "
        f"--config.data.data_dir={args.data_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
