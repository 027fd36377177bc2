"""Whether a saved checkpoint's files are all there and whole, read without orbax or JAX (for report).

A checkpoint item (checkpoint.py: `state`, `model`) is an OCDBT key-value store: a manifest, B-tree
nodes, and data files whose byte ranges hold the arrays. Its metadata files are JSON. A file cut
short (a full disk, a partial copy) or gone makes a byte range point past the end of a file, which
the manifest and nodes tell without reading any array: TensorStore's `ocdbt.dump` reads only them.
What this finds damaged, orbax cannot restore; it does not re-read the arrays' bytes.
"""

from __future__ import annotations

import json

from etils import epath

JSON_FILES = ("_CHECKPOINT_METADATA", "progress/metadata")  # in a latest/<step> folder
OCDBT_ITEMS = ("state",)


def steps(directory: epath.Path) -> list[int]:
    """The committed steps in a manager's folder (orbax names them by their number), newest first."""
    if not directory.is_dir():
        return []
    return sorted((int(p.name) for p in directory.iterdir() if p.name.isdigit()), reverse=True)


def damage(step_dir: epath.Path) -> str | None:
    """What is wrong with the latest checkpoint in `step_dir`, or None: every file is there and whole."""
    for name in JSON_FILES:
        try:
            json.loads((step_dir / name).read_text())
        except FileNotFoundError:
            return f"{name} is missing"
        except ValueError as error:
            return f"{name} is damaged ({error})"
    for item in OCDBT_ITEMS:
        problem = ocdbt_damage(step_dir / item)
        if problem:
            return f"{item}: {problem}"
    return None


def ocdbt_damage(item: epath.Path) -> str | None:
    """A missing or short file of the OCDBT store in `item`, or None."""
    import tensorstore as ts

    try:
        json.loads((item / "_METADATA").read_text())
        store = ts.KvStore.open(_url(item)).result()
        manifest = ts.ocdbt.dump(store).result()
        nodes = [version["root"]["location"] for version in manifest["versions"][-1:]]
        sizes = {}
        while nodes:
            node = ts.ocdbt.dump(store, nodes.pop()).result()
            for entry in node["entries"]:
                for reference in entry.values():
                    if isinstance(reference, str) and reference.startswith("btreenode::"):
                        nodes.append(reference)
                    elif isinstance(reference, str) and reference.startswith("value:"):
                        problem = _short(item, reference, sizes)
                        if problem:
                            return problem
    except (ValueError, KeyError, OSError) as error:  # TensorStore reports damage as ValueError
        return " ".join(str(error).split("See full TensorStore details", 1)[0].split())[:200]
    return None


def _url(path: epath.Path) -> str:
    text = str(path)
    return (text if "://" in text else "file://" + text) + "/"


def _short(item: epath.Path, reference: str, sizes: dict) -> str | None:
    """`reference`: 'value:PREFIX:FILE:OFFSET:LENGTH' (the bytes of one value in a data file)."""
    location, offset, length = reference.removeprefix("value:").rsplit(":", 2)
    prefix, name = location.split(":", 1)
    path = item / prefix / name
    if path not in sizes:
        sizes[path] = path.stat().length if path.exists() else None
    if sizes[path] is None:
        return f"{path.relative_to(item)} is missing"
    if sizes[path] < int(offset) + int(length):
        return f"{path.relative_to(item)} is cut short ({sizes[path]} of at least {int(offset) + int(length)} bytes)"
    return None
