"""Official downloads of the single-positive datasets -> "formatted npy" arrays (docs/method.md, "Protocol").

Reproduces the row order and labels of the single-positive codebase's preproc/format_*.py
(Cole et al. 2021, which BoostLU reuses), because row order decides which positive the seeded
observation keeps:
  VOC 2012  rows = images with >= 1 label equal to 1 in ImageSets/Main/<class>_<phase>.txt,
            sorted by file name; label 1 only for value 1: difficult (0) and absent (-1) are
            negatives, and an image whose only objects are difficult is not a row at all
            (tfds voc/2012 calls this 'labels_no_difficult').
  COCO 2014 rows = image ids with >= 1 instance annotation, sorted as strings; 80 categories in
            category-id order.
  CUB       rows in images.txt order, split by train_test_split.txt (1 = train); the 312
            attributes' is_present as is.
  NUS-WIDE  only as formatted files (the benchmark's re-crawled subset has no other source).
Phases are the official ones: 'train' (all of it) and 'val'.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

PHASES = ("train", "val")

VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


@dataclasses.dataclass
class Formatted:
    images: dict  # phase -> (N,) str, image paths relative to image_root
    labels: dict  # phase -> (N, C) int8 in {0, 1}
    image_root: str
    class_names: list
    labels_obs: dict = dataclasses.field(default_factory=dict)  # phase -> stored observation, if any


def _need(path: str, what: str) -> str:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: expected {what}")
    return path


def _find(source: str, candidates: list[str], what: str) -> str:
    """The first of source/<candidate> that exists (downloads unpack with or without a top folder)."""
    for c in candidates:
        path = os.path.join(source, c)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"--source={source} holds none of {candidates}: expected {what}")


def read_voc(source: str) -> Formatted:
    root = _find(
        source, ["VOCdevkit/VOC2012", "VOC2012", "."], "VOCdevkit/VOC2012 from VOCtrainval_11-May-2012.tar"
    )
    lists = _need(os.path.join(root, "ImageSets", "Main"), "ImageSets/Main/<class>_{train,val}.txt")
    images, labels = {}, {}
    for phase in PHASES:
        positives: dict[str, list[int]] = {}
        for c, name in enumerate(VOC_CLASSES):
            with open(_need(os.path.join(lists, f"{name}_{phase}.txt"), "a VOC class list")) as f:
                for line in f:
                    fields = line.split()
                    if fields and int(fields[-1]) == 1:
                        positives.setdefault(fields[0] + ".jpg", []).append(c)
        names = sorted(positives)
        images[phase] = np.array(names)
        labels[phase] = np.zeros((len(names), len(VOC_CLASSES)), np.int8)
        for i, n in enumerate(names):
            labels[phase][i, positives[n]] = 1
    return Formatted(images, labels, os.path.join(root, "JPEGImages"), list(VOC_CLASSES))


def read_coco(source: str) -> Formatted:
    images, labels, class_names = {}, {}, None
    for phase in PHASES:
        path = _need(
            os.path.join(source, "annotations", f"instances_{phase}2014.json"),
            "annotations/ from annotations_trainval2014.zip",
        )
        with open(path) as f:
            data = json.load(f)
        categories = sorted(data["categories"], key=lambda c: c["id"])
        names = [c["name"] for c in categories]
        if class_names is not None and names != class_names:
            raise ValueError(f"{path}: categories differ from instances_train2014.json")
        class_names = names
        column = {c["id"]: i for i, c in enumerate(categories)}
        ids = sorted({str(a["image_id"]) for a in data["annotations"]})  # as strings, like the reference
        row = {int(i): r for r, i in enumerate(ids)}
        lab = np.zeros((len(ids), len(categories)), np.int8)
        for a in data["annotations"]:
            lab[row[int(a["image_id"])], column[a["category_id"]]] = 1
        images[phase] = np.array([f"{phase}2014/COCO_{phase}2014_{int(i):012d}.jpg" for i in ids])
        labels[phase] = lab
    return Formatted(images, labels, source, class_names)


def read_cub(source: str) -> Formatted:
    root = _find(
        source, ["CUB_200_2011/CUB_200_2011", "CUB_200_2011", "."], "CUB_200_2011/ from CUB_200_2011.tgz"
    )
    _need(os.path.join(root, "images.txt"), "images.txt")
    with open(os.path.join(root, "images.txt")) as f:
        files = {int(i): name for i, name in (line.split() for line in f if line.strip())}
    with open(_need(os.path.join(root, "train_test_split.txt"), "train_test_split.txt")) as f:
        is_train = {int(i): int(t) for i, t in (line.split() for line in f if line.strip())}
    ids = sorted(files)
    if sorted(is_train) != ids:
        raise ValueError(f"{root}: images.txt and train_test_split.txt list different image ids")
    num_attributes = 312
    present = np.full((len(ids), num_attributes), -1, np.int8)
    row = {i: r for r, i in enumerate(ids)}
    path = _need(
        os.path.join(root, "attributes", "image_attribute_labels.txt"),
        "attributes/image_attribute_labels.txt",
    )
    with open(path) as f:
        for line in f:
            # image_id attribute_id is_present certainty_id time; a few lines of the official file
            # carry an extra field, so only the first three are read by position.
            fields = line.split()
            if fields:
                present[row[int(fields[0])], int(fields[1]) - 1] = int(fields[2])
    if (present < 0).any():
        raise ValueError(f"{path}: {(present < 0).sum()} (image, attribute) pairs have no line")
    names = [str(a) for a in range(num_attributes)]
    for cand in ("attributes.txt", "attributes/attributes.txt", "../attributes.txt"):
        p = os.path.join(root, cand)
        if os.path.exists(p):
            with open(p) as f:
                names = [line.split(maxsplit=1)[1].strip() for line in f if line.strip()]
            break
    train = np.array([is_train[i] == 1 for i in ids])
    all_images = np.array([files[i] for i in ids])
    return Formatted(
        {"train": all_images[train], "val": all_images[~train]},
        {"train": present[train], "val": present[~train]},
        os.path.join(root, "images"),
        names,
    )


def read_formatted(
    source: str, image_root: str, num_classes: int, class_names: list | None = None
) -> Formatted:
    """An existing formatted folder as is: formatted_{train,val}_{images,labels}[_obs].npy."""
    images, labels, observed = {}, {}, {}
    for phase in PHASES:
        images[phase] = np.load(
            _need(os.path.join(source, f"formatted_{phase}_images.npy"), "a formatted-npy file")
        )
        lab = np.load(_need(os.path.join(source, f"formatted_{phase}_labels.npy"), "a formatted-npy file"))
        if lab.shape != (len(images[phase]), num_classes) or not np.isin(lab, (0, 1)).all():
            raise ValueError(
                f"{source}/formatted_{phase}_labels.npy: expected (N={len(images[phase])}, {num_classes}) "
                f"in {{0, 1}}, got {lab.shape} with values {np.unique(lab)[:5]}"
            )
        labels[phase] = lab.astype(np.int8)
        obs_path = os.path.join(source, f"formatted_{phase}_labels_obs.npy")
        if os.path.exists(obs_path):
            obs = np.load(obs_path)
            if obs.shape != lab.shape or not np.isin(obs, (-1, 0, 1)).all():
                raise ValueError(f"{obs_path}: expected {lab.shape} in {{-1, 0, 1}}, got {obs.shape}")
            observed[phase] = obs.astype(np.int8)
    names = class_names or [str(c) for c in range(num_classes)]
    return Formatted(images, labels, image_root, names, observed)


def is_formatted(source: str) -> bool:
    return os.path.exists(os.path.join(source, "formatted_train_labels.npy"))
