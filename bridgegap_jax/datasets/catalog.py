"""Which datasets exist, what they hold, and how a prepared one is found on disk.

Every dataset is a tfds dataset with splits 'train', 'validation' and 'test' and features
'image', 'labels' (full or verified labels), 'labels_obs' (observed labels), 'index', 'image_id'.
The demo builds itself; the others are prepared once from the official downloads into
`config.data.data_dir`.
"""

from __future__ import annotations

import dataclasses
import os

from etils import epath


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    tfds_name: str
    num_classes: int
    label_encoding: str  # 'single_positive' ({0,1}, 0 unobserved) or 'partial' ({-1,0,1}, -1 unobserved)
    downloads: str  # what the user must fetch by hand


DATASETS = {
    "demo": DatasetSpec("bridgegap_demo", 10, "single_positive", "nothing: built from scikit-learn's digits"),
    "voc": DatasetSpec("bridgegap_voc", 20, "single_positive", "VOCtrainval_11-May-2012.tar (VOC 2012)"),
    "coco": DatasetSpec("bridgegap_coco", 80, "single_positive", "COCO 2014 train2014/, val2014/ and annotations_trainval2014.zip"),
    "nuswide": DatasetSpec("bridgegap_nuswide", 81, "single_positive", "NUS-WIDE images and the single-positive benchmark's formatted files"),
    "cub": DatasetSpec("bridgegap_cub", 312, "single_positive", "CUB_200_2011.tgz"),
    "openimages": DatasetSpec(
        "bridgegap_openimages",
        5000,
        "partial",
        "OpenImages V3 (2017_11): images_2017_11, annotations_human_2017_11, classes_2017_11",
    ),
}


# Files a prepared dataset may keep beside its tfds files (in builder.data_dir).
CLASS_NAMES_FILE = "class_names.txt"  # one name per line, in label order
CLASS_GROUPS_FILE = "class_groups.npy"  # (C,) int: frequency group 1..5 of each class (SPEC §5)


class DatasetNotFoundError(FileNotFoundError):
    pass


def spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"config.data.name={name!r} is not one of {sorted(DATASETS)}")
    return DATASETS[name]


def label_encoding(builder) -> str:
    """The label encoding of a prepared builder, found by its tfds name."""
    for data_spec in DATASETS.values():
        if data_spec.tfds_name == builder.info.name:
            return data_spec.label_encoding
    raise ValueError(f"{builder.info.name!r} at {builder.data_dir} is none of the catalog's datasets")


def load_builder(name: str, data_dir: str):
    """The prepared tfds builder of dataset `name` under `data_dir`, checked against its spec."""
    import tensorflow_datasets as tfds

    data_spec = spec(name)
    data_dir = os.path.expanduser(data_dir)  # a no-op on gs:// paths, which epath handles below
    if name == "demo":
        from bridgegap_jax.datasets import demo

        builder = demo.load_builder(data_dir)
    else:
        root = epath.Path(data_dir) / data_spec.tfds_name
        versions = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
        prepared = [v for v in versions if (root / v / "dataset_info.json").is_file()]
        if not prepared:
            raise DatasetNotFoundError(
                f"dataset {name!r} is not prepared: no {root}/<version>/dataset_info.json "
                f"(config.data.data_dir={data_dir!r}). It needs {data_spec.downloads}; prepare it once "
                f"with `python -m bridgegap_jax.datasets.prepare {name} --source=<downloads> "
                f"--data_dir={data_dir}` (README, section Data), or point --config.data.data_dir at "
                "the folder that holds it."
            )
        builder = tfds.builder_from_directory(str(root / prepared[-1]))

    check_label_shapes(builder, name, data_spec.num_classes)
    return builder


def check_label_shapes(builder, name: str, num_classes: int) -> None:
    for feature in ("labels", "labels_obs"):
        shape = tuple(builder.info.features[feature].shape)
        if shape != (num_classes,):
            raise ValueError(
                f"dataset {name!r} at {builder.data_dir}: feature {feature!r} has shape {shape}, expected "
                f"({num_classes},) for {num_classes} classes; the prepared files are not this dataset's "
                "(re-run its prepare command, or fix config.data.name / config.data.data_dir)."
            )


def class_names(builder, name: str) -> list[str]:
    path = epath.Path(builder.data_dir) / CLASS_NAMES_FILE
    if path.exists():
        with path.open() as f:
            return [line.rstrip("\n") for line in f]
    if name == "demo":
        from bridgegap_jax.datasets import demo

        return list(demo.CLASS_NAMES)
    return [str(c) for c in range(spec(name).num_classes)]


def class_groups(builder):
    """Frequency groups of the classes (OpenImages), or None for datasets without them."""
    import numpy as np

    path = epath.Path(builder.data_dir) / CLASS_GROUPS_FILE
    if not path.exists():
        return None
    with path.open("rb") as f:
        return np.load(f)
