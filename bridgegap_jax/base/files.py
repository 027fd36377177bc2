"""Files the tools write for the user (predictions, exported weights): never half-written, and never
replacing a file that is there unless asked."""

from __future__ import annotations

import contextlib
import hashlib
import os
from typing import Iterator


@contextlib.contextmanager
def atomic_output(path: str, *, overwrite: bool = False) -> Iterator[str]:
    """Yields a temporary path beside `path` to write; when the block ends without an error it becomes
    `path` (linked into place, so a file that appeared meanwhile is not replaced either), else it is
    removed. FileExistsError if `path` exists and not `overwrite`."""
    path = os.path.expanduser(path)
    exists = FileExistsError(f"{path} exists; choose another --out, or pass --overwrite to replace it")
    if os.path.exists(path) and not overwrite:
        raise exists
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        yield tmp
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise exists from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
