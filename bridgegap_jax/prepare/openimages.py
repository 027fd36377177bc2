"""OpenImages V3 (2017_11) human-verified labels over the 5,000 trainable classes (docs/method.md, "OpenImages").

Source layout (what the 2017_11 tarballs and the image download give):
  <source>/classes-trainable.txt                   5,000 label MIDs, one per line (label order)
  <source>/class-descriptions.csv                  MID,name
  <source>/<split>/annotations-human.csv           ImageID,Source,LabelName,Confidence
  <source>/images/<split>/<ImageID>.jpg            split = train | validation | test
Rows of a split = every ImageID of its annotations-human.csv, sorted. Label of (image, trainable
class): 1 if a human verified it with Confidence 1, 0 if with Confidence 0, -1 if never verified.
When two verifications of one pair disagree (different Sources), the positive wins; the count is
printed. Labels are held sparse (3.4M x 5,000 dense int8 would be 17 GB).
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import os
from array import array

import numpy as np

SPLITS = ("train", "validation", "test")


def read_classes(source: str) -> tuple[list[str], list[str]]:
    """(MIDs in label order, their names)."""
    path = os.path.join(source, "classes-trainable.txt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: unpack classes_2017_11.tar.gz into --source={source}")
    with open(path) as f:
        mids = [line.strip() for line in f if line.strip()]
    if len(set(mids)) != len(mids):
        raise ValueError(f"{path}: duplicate MIDs")
    names = {}
    desc = os.path.join(source, "class-descriptions.csv")
    if os.path.exists(desc):
        with open(desc, newline="", encoding="utf-8") as f:
            for fields in csv.reader(f):
                if len(fields) >= 2:
                    names[fields[0]] = fields[1]
    return mids, [names.get(m, m) for m in mids]


@dataclasses.dataclass
class SparseLabels:
    """Verified labels of one split in CSR form: row r's entries are cols/vals[indptr[r]:indptr[r+1]]."""

    image_ids: np.ndarray  # (N,) str, sorted
    indptr: np.ndarray  # (N + 1,) int64
    cols: np.ndarray  # int32 class index
    vals: np.ndarray  # int8 0 / 1
    num_classes: int
    conflicts: int = 0  # pairs verified both positive and negative
    other_labels: int = 0  # rows whose LabelName is not a trainable class

    def row(self, r: int) -> np.ndarray:
        vec = np.full(self.num_classes, -1, np.int8)
        lo, hi = self.indptr[r], self.indptr[r + 1]
        vec[self.cols[lo:hi]] = self.vals[lo:hi]
        return vec

    def positive_counts(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Verified positives per class over `rows` (default: all)."""
        keep = self.vals == 1
        if rows is not None:
            in_rows = np.zeros(len(self.image_ids), bool)
            in_rows[rows] = True
            keep &= np.repeat(in_rows, np.diff(self.indptr))
        return np.bincount(self.cols[keep], minlength=self.num_classes).astype(np.int64)


def read_split(path: str, mids: list[str]) -> SparseLabels:
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} not found: unpack annotations_human_2017_11.tar.gz into the --source folder"
        )
    column = {m: i for i, m in enumerate(mids)}
    row_of: dict[str, int] = {}
    rows, cols, vals = array("i"), array("i"), array("b")
    other = 0
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path} is empty")
        names = [h.strip() for h in header]
        if "ImageID" in names:
            i_img, i_label, i_conf = (
                names.index("ImageID"),
                names.index("LabelName"),
                names.index("Confidence"),
            )
            pending = []
        else:  # no header line
            i_img, i_label, i_conf = 0, 2, 3
            pending = [header]
        for fields in itertools.chain(pending, reader):
            r = row_of.setdefault(fields[i_img], len(row_of))  # every ImageID is a row
            c = column.get(fields[i_label])
            if c is None:
                other += 1
                continue
            rows.append(r)
            cols.append(c)
            vals.append(1 if float(fields[i_conf]) > 0.5 else 0)
    ids = np.array(sorted(row_of), dtype=object)
    rank = np.empty(len(row_of), np.int64)
    rank[[row_of[i] for i in ids]] = np.arange(len(ids))
    rows = rank[np.frombuffer(rows, np.int32)] if len(rows) else np.zeros(0, np.int64)
    cols = np.frombuffer(cols, np.int32) if len(cols) else np.zeros(0, np.int32)
    vals = np.frombuffer(vals, np.int8) if len(vals) else np.zeros(0, np.int8)
    # Sort by (row, class, value): the last of each (row, class) run is its max, so positive wins.
    order = np.lexsort((vals, cols, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    conflicts = 0
    if len(rows):
        change = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])
        first, last = np.r_[True, change], np.r_[change, True]
        conflicts = int(np.sum((vals[first] == 0) & (vals[last] == 1)))  # a pair's values run 0.. then 1
        rows, cols, vals = rows[last], cols[last], vals[last]
    indptr = np.searchsorted(rows, np.arange(len(ids) + 1)).astype(np.int64)
    return SparseLabels(ids.astype(str), indptr, cols.astype(np.int32), vals, len(mids), conflicts, other)


def image_path(source: str, split: str, image_id: str) -> str:
    return os.path.join(source, "images", split, f"{image_id}.jpg")


def frequency_table(
    path: str, mids: list[str], names: list[str], counts: np.ndarray, csv_counts: np.ndarray
) -> None:
    """class_frequency.tsv: verified positive training labels per class; `positives` counts the
    prepared (readable) training images and defines the groups, `positives_in_csv` all CSV rows."""
    with open(path, "w") as f:
        f.write("class\tmid\tname\tpositives\tpositives_in_csv\n")
        for c, (mid, name) in enumerate(zip(mids, names)):
            f.write(f"{c}\t{mid}\t{name}\t{counts[c]}\t{csv_counts[c]}\n")
