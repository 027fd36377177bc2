r"""A label table -> one row per image: its file, its labels (1 positive, 0 negative, -1 unknown) and
its split, if the table gives one. Read by `prepare folder` before anything is written.

The table is CSV (.csv), TSV (.tsv) or JSON lines (.jsonl) with a `file_name` column: the image's
path relative to the image folder, as in Hugging Face's imagefolder metadata. The labels are either
  - one column per class (the header names the classes, in label order): cells 1 (positive),
    0 (negative), -1 or empty (unknown); in JSON lines also numbers and null; or
  - a `labels` column of the positive class names, separated by `|` (`--label_separator`), and
    optionally a `negatives` column likewise; every class not listed is unknown. In JSON lines a
    list of names does too. The classes are the names used, sorted, unless --class_names fixes them.
    Read with the default separator, names that look joined by another one (`cat;dog` beside `cat`:
    split at `;`, the names are fewer) are an error that names the --label_separator to pass: read
    as they are, every combination of classes would silently become a class of its own. A separator
    given with the flag, `|` included, is trusted.
An optional `split` column holds train, validation or test. A UTF-8 byte-order mark, CRLF line
ends and quoted fields (names with commas, even line breaks) are read as csv reads them. A
`file_name` written with Windows backslashes (`dogs\001.jpg`) is read with `/`, unless a file of
that very name is in the image folder (a backslash is a legal file name character on Linux). Rows
that name one file twice are merged; a class known both ways, or two splits, is an error. Every error
is one line naming the file, the line and the column.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import posixpath
import re
import shlex

import numpy as np

from bridgegap_jax.base.errors import UserError

FILE_COLUMN, SPLIT_COLUMN, LABELS_COLUMN, NEGATIVES_COLUMN = "file_name", "split", "labels", "negatives"
DEFAULT_SEPARATOR = "|"
OTHER_SEPARATORS = (";", ",", "/")  # what a list joined by something else shows inside its "names"
FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl"}
SPLITS = ("train", "validation", "test")
CELLS = {"1": 1, "0": 0, "-1": -1, "": -1}
UNKNOWN = -1
LAYOUTS = {"columns": "one column per class", "lists": "a labels column of class names"}


class TableError(UserError, ValueError):
    """A table that cannot be read as labels; the message names the file, line and column."""


@dataclasses.dataclass
class Table:
    path: str
    format: str  # FORMATS
    layout: str  # LAYOUTS
    classes: list[str]
    file_names: list[str]  # normalised, one per image, in table order
    labels: np.ndarray  # (N, C) int8: 1 positive, 0 negative, -1 unknown
    splits: list[str] | None  # from the split column, or None
    lines: list[int]  # the line each image was first listed on
    merged: int  # rows merged into an earlier row of the same file
    ignored_columns: list[str]
    windows_paths: list[tuple[str, str]]  # (file_name as written with backslashes, as read)


def read_table(
    path: str, class_names: list[str] | None = None, separator: str | None = None, images: str | None = None
) -> Table:
    """The table at `path`; `class_names` fixes the classes and their order (default: from the table).

    separator: between the names of a labels cell; None is DEFAULT_SEPARATOR, checked against names that
    look joined by another one (one given is trusted). images: the image folder, where a file_name
    with backslashes is looked up as written before it is read as a Windows path.
    """
    fmt = FORMATS.get(os.path.splitext(path)[1].lower())
    if fmt is None:
        raise TableError(f"--labels={path}: the table must be a .csv, .tsv or .jsonl file")
    if separator == "":
        raise TableError("--label_separator must not be empty")
    try:
        columns, rows = (_jsonl if fmt == "jsonl" else _delimited)(path, fmt)
    except UnicodeDecodeError as error:
        raise TableError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    where = _Where(path)
    if FILE_COLUMN not in columns:
        raise TableError(
            f"{where(1)}: the header has no {FILE_COLUMN} column (it has: "
            f"{', '.join(columns) or 'nothing'}); name the column of image paths {FILE_COLUMN}, as in "
            "imagefolder metadata"
        )
    if not rows:
        raise TableError(f"{path} has no rows under its header")
    layout = "lists" if LABELS_COLUMN in columns else "columns"
    if layout == "columns" and NEGATIVES_COLUMN in columns and class_names is None:
        raise TableError(f"{where(1)}: a {NEGATIVES_COLUMN} column needs a {LABELS_COLUMN} column beside it")
    reserved = {FILE_COLUMN, SPLIT_COLUMN} | (
        {LABELS_COLUMN, NEGATIVES_COLUMN} if layout == "lists" else set()
    )
    if layout == "lists":
        listed = _listed_names(rows, separator or DEFAULT_SEPARATOR, where)
        if separator is None and class_names is None:
            _refuse_joined_names(listed, where)
        classes = class_names or sorted(listed)
        used = set(reserved)
    else:
        classes = class_names or [c for c in columns if c not in reserved]
        absent = [c for c in classes if c not in columns]
        if absent:
            raise TableError(
                f"{where(1)}: no column for class(es) {', '.join(map(repr, absent[:5]))} of --class_names"
            )
        used = reserved | set(classes)
    if not classes:
        raise TableError(
            f"{where(1)}: no class columns and no {LABELS_COLUMN} column: the table holds no labels"
        )
    index = {name: c for c, name in enumerate(classes)}

    separator = separator or DEFAULT_SEPARATOR
    first: dict[str, int] = {}
    file_names, lines, labels, splits, windows_paths = [], [], [], [], []
    for line, row in rows:
        file_name = _file_name(row.get(FILE_COLUMN), where(line, FILE_COLUMN), images)
        if "\\" in str(row.get(FILE_COLUMN)) and "\\" not in file_name:
            windows_paths.append((row[FILE_COLUMN].strip(), file_name))
        values = np.full(len(classes), UNKNOWN, np.int8)
        if layout == "lists":
            for column, value in ((LABELS_COLUMN, 1), (NEGATIVES_COLUMN, 0)):
                for name in _names(row.get(column), separator, where(line, column)):
                    if name not in index:
                        raise TableError(
                            f"{where(line, column)}: class {name!r} is not one of the {len(classes)} "
                            "classes of --class_names"
                        )
                    if values[index[name]] == 1 and value == 0:
                        raise TableError(f"{where(line, column)}: class {name!r} is also listed as positive")
                    values[index[name]] = value
        else:
            for name in classes:
                values[index[name]] = _cell(row.get(name), where(line, name))
        split = _split(row.get(SPLIT_COLUMN), where(line, SPLIT_COLUMN)) if SPLIT_COLUMN in columns else None
        if file_name in first:
            r = first[file_name]
            _merge(
                labels[r],
                values,
                splits[r],
                split,
                classes,
                f"{path}, lines {lines[r]} and {line}",
                file_name,
            )
            continue
        first[file_name] = len(file_names)
        file_names.append(file_name)
        lines.append(line)
        labels.append(values)
        splits.append(split)
    labels = np.stack(labels)
    if not (labels == 1).any():
        raise TableError(
            f"{path}: no row has a positive label ({len(file_names)} images, {len(classes)} classes): put a 1 in "
            "a class's column, or a class name in the labels column, of the images that show it"
        )
    return Table(
        path=path,
        format=fmt,
        layout=layout,
        classes=list(classes),
        file_names=file_names,
        labels=labels,
        splits=splits if SPLIT_COLUMN in columns else None,
        lines=lines,
        merged=len(rows) - len(file_names),
        ignored_columns=[c for c in columns if c not in used],
        windows_paths=windows_paths,
    )


class _Where:
    """'FILE, line N, column C' for messages."""

    def __init__(self, path: str):
        self.path = path

    def __call__(self, line: int, column: str | None = None) -> str:
        return f"{self.path}, line {line}" + (f", column {column!r}" if column is not None else "")


def _delimited(path: str, fmt: str) -> tuple[list[str], list[tuple[int, dict]]]:
    """(header, [(line, {column: text})]) of a CSV / TSV file; blank lines are skipped."""
    where = _Where(path)
    with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: a byte-order mark is not a column name
        reader = csv.reader(f, delimiter="," if fmt == "csv" else "\t")
        header, rows = None, []
        for fields in reader:
            if not any(field.strip() for field in fields):
                continue
            if header is None:
                header = [field.strip() for field in fields]
                repeated = sorted({c for c in header if header.count(c) > 1})
                if repeated:
                    raise TableError(
                        f"{where(reader.line_num)}: column(s) {', '.join(map(repr, repeated))} appear twice"
                    )
                continue
            if len(fields) != len(header):
                hint = (
                    "quote a field that holds the delimiter"
                    if len(fields) > len(header)
                    else "a field is missing"
                )
                raise TableError(
                    f"{where(reader.line_num)}: {len(fields)} fields, but the header has "
                    f"{len(header)} ({hint})"
                )
            rows.append((reader.line_num, dict(zip(header, fields))))
    return header or [], rows


def _jsonl(path: str, fmt: str) -> tuple[list[str], list[tuple[int, dict]]]:
    """(keys in order of first appearance, [(line, object)]) of a JSON lines file."""
    columns: dict[str, None] = {}
    rows = []
    with open(path, encoding="utf-8-sig") as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as error:
                raise TableError(
                    f"{path}, line {line}: not JSON ({error.msg}, character {error.colno})"
                ) from None
            if not isinstance(row, dict):
                raise TableError(
                    f'{path}, line {line}: a JSON object {{"{FILE_COLUMN}": ...}} expected, '
                    f"got {text.strip()[:40]}"
                )
            columns.update(dict.fromkeys(row))
            rows.append((line, row))
    return list(columns), rows


def _listed_names(rows, separator: str, where: _Where) -> dict[str, tuple[int, str] | None]:
    """Every class name of the labels and negatives columns -> the (line, column) of the first text cell
    that holds it (None if only JSON lists do: those are not split at a separator)."""
    names: dict[str, tuple[int, str] | None] = {}
    for line, row in rows:
        for column in (LABELS_COLUMN, NEGATIVES_COLUMN):
            value = row.get(column)
            for name in _names(value, separator, where(line, column)):
                if names.get(name) is None:
                    names[name] = (line, column) if isinstance(value, str) else None
    return names


def _refuse_joined_names(names: dict[str, tuple[int, str] | None], where: _Where) -> None:
    """TableError if the names read at DEFAULT_SEPARATOR look like lists joined by another separator:
    text cells' names hold it, and split at it, the names are fewer (`a;b`, `b;c`, `a`, `c` are 3
    names, not 4; `bird, small`, `cat` stay 3 parts for 2 names)."""
    best = None
    for candidate in OTHER_SEPARATORS:
        joined = [name for name, cell in names.items() if cell is not None and candidate in name]
        parts = {part.strip() for name in names for part in name.split(candidate) if part.strip()}
        if joined and len(parts) < len(names) and (best is None or len(parts) < len(best[1])):
            best = candidate, parts, joined
    if best is None:
        return
    candidate, parts, joined = best
    first = min(joined, key=lambda name: names[name][0])
    raise TableError(
        f"{where(*names[first])}: {first!r} looks like class names joined by {candidate!r}, not by the "
        f"default {DEFAULT_SEPARATOR!r} (split at {candidate!r}, the table's {len(names)} names are "
        f"{len(parts)}); pass --label_separator={shlex.quote(candidate)} (or "
        f"--label_separator={shlex.quote(DEFAULT_SEPARATOR)} if {candidate!r} belongs inside the names)"
    )


def _file_name(value, where: str, images: str | None = None) -> str:
    if not isinstance(value, str) or not value.strip():
        raise TableError(f"{where}: no image path")
    name = value.strip()
    if "\\" in name and not (images and os.path.isfile(os.path.join(images, name))):
        name = name.replace("\\", "/")  # a Windows path; a file named with a backslash is kept above
    name = posixpath.normpath(name)
    if name.startswith("/") or re.match(r"[A-Za-z]:", name) or name == ".." or name.startswith("../"):
        raise TableError(f"{where}: {value!r} is not a path inside the image folder (--images)")
    return name


def _cell(value, where: str) -> int:
    if value is None or (
        isinstance(value, (int, float)) and not isinstance(value, bool) and value in (1, 0, -1)
    ):
        return UNKNOWN if value is None else int(value)
    if isinstance(value, str) and value.strip() in CELLS:
        return CELLS[value.strip()]
    raise TableError(f"{where}: {value!r} is not 1 (positive), 0 (negative), -1 or empty (unknown)")


def _names(value, separator: str, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [name.strip() for name in value.split(separator) if name.strip()]
    if isinstance(value, list) and all(isinstance(name, str) for name in value):
        return [name.strip() for name in value if name.strip()]
    raise TableError(f"{where}: {value!r} is not a list of class names")


def _split(value, where: str) -> str:
    split = value.strip().lower() if isinstance(value, str) else value
    if split not in SPLITS:
        raise TableError(
            f"{where}: {value!r} is not one of {', '.join(SPLITS)} (or drop the {SPLIT_COLUMN} column)"
        )
    return split


def _merge(
    kept: np.ndarray, new: np.ndarray, kept_split, new_split, classes, where: str, file_name: str
) -> None:
    """A second row of one file: its known labels join the first row's; a contradiction is an error."""
    clash = np.flatnonzero((kept != UNKNOWN) & (new != UNKNOWN) & (kept != new))
    if len(clash):
        c = clash[0]
        raise TableError(
            f"{where}: {FILE_COLUMN} {file_name!r} is listed twice with conflicting labels (class "
            f"{classes[c]!r}: {kept[c]} and {new[c]})"
        )
    if kept_split != new_split:
        raise TableError(
            f"{where}: {FILE_COLUMN} {file_name!r} is listed twice, in splits {kept_split!r} and "
            f"{new_split!r}"
        )
    np.copyto(kept, new, where=new != UNKNOWN)
