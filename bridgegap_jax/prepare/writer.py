"""Write a prepared dataset: ArrayRecord shards + tfds metadata, readable by tfds.builder_from_directory.

We write the shards ourselves (not a GeneratorBasedBuilder) so that rows land in the files in
exactly the order given (file order == 'index' order), with no temporary shuffle copy of a
200+ GB dataset, while worker processes verify, decode and re-encode the images in parallel.
Examples are serialized by tfds's own serializer and the images stored as already-encoded bytes,
so writing needs no TensorFlow; `group_size:1` makes every record separately readable (random
access at training time), as tfds's own ArrayRecord writer does.
Rows whose image is missing or unreadable are skipped, listed in `missing_<split>.tsv` and
counted; 'index' stays 0..N-1 over the rows that were written.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import shutil
import time
from typing import Callable, Sequence

import numpy as np

from bridgegap_jax.base.errors import UserError
from bridgegap_jax.prepare import image_files

VERSION = "1.0.0"
SHARD_BYTES = 1 << 30  # ~1 GiB shards: reading is random access, so few large files are fine
MANIFEST = "missing_{split}.tsv"


def features(num_classes: int, compress_labels: bool, image_format: str = "jpeg"):
    """The features of every prepared dataset (the catalog's contract)."""
    import tensorflow_datasets as tfds

    # Raw int8 bytes: tf.train.Example would otherwise upcast to int64 varints (-1 takes 10 bytes).
    # zlib for OpenImages: 5,000 labels per image, nearly all -1, shrink ~50x.
    encoding = "zlib" if compress_labels else "bytes"
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format=image_format),
            "labels": tfds.features.Tensor(shape=(num_classes,), dtype=np.int8, encoding=encoding),
            "labels_obs": tfds.features.Tensor(shape=(num_classes,), dtype=np.int8, encoding=encoding),
            "index": tfds.features.Scalar(dtype=np.int64),
            "image_id": tfds.features.Text(),
        }
    )


class PrepareError(UserError, ValueError):
    """Something in the downloads that the user must fix; the message says what."""


@dataclasses.dataclass
class SplitSource:
    """The rows of one split, in output order, before their images are read.

    `paths` are image files, or (the demo) the encoded bytes themselves.
    """

    image_ids: Sequence[str]
    paths: Sequence[str | bytes]
    labels: Callable[[int], tuple[np.ndarray, np.ndarray]]  # row -> (labels, labels_obs), int8 (C,)


@dataclasses.dataclass
class SplitResult:
    kept: np.ndarray  # source rows written, in order (row of index i = kept[i])
    missing: list  # (image_id, status, reason)
    shard_lengths: list
    num_bytes: int


def _tasks(paths, max_short_side):
    for path in paths:
        yield path, max_short_side


def _results(paths, max_short_side, workers):
    """(status, payload) per path, in order; verified and re-encoded in `workers` processes."""
    if workers <= 1:
        for task in _tasks(paths, max_short_side):
            yield image_files.process_task(task)
        return
    # spawn: a forked child would inherit this process's threads (and their locks).
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(image_files.process_task, _tasks(paths, max_short_side), chunksize=8)


def write_split(
    out_dir: str,
    tfds_name: str,
    split: str,
    source: SplitSource,
    feats,
    *,
    max_short_side: int | None,
    workers: int,
    shard_bytes: int = SHARD_BYTES,
    log: Callable[[str], None] = print,
) -> SplitResult:
    from array_record.python.array_record_module import ArrayRecordWriter
    from tensorflow_datasets.core import example_serializer

    serializer = example_serializer.ExampleSerializer(feats.get_serialized_info())
    total = len(source.paths)
    kept, missing, lengths, shard_sizes = [], [], [], []
    writer, shard_size, start = None, 0, time.time()
    last_print = start

    def shard_path(i):
        return os.path.join(out_dir, f"{tfds_name}-{split}.array_record-{i:05d}.tmp")

    for row, (status, payload) in enumerate(_results(source.paths, max_short_side, workers)):
        if status != "ok":
            missing.append((source.image_ids[row], status, payload))
            continue
        labels, labels_obs = source.labels(row)
        example = {
            "image": payload,
            "labels": labels,
            "labels_obs": labels_obs,
            "index": len(kept),
            "image_id": source.image_ids[row],
        }
        data = serializer.serialize_example(feats.encode_example(example))
        if writer is None or shard_size >= shard_bytes:
            if writer is not None:
                writer.close()
                shard_sizes.append(shard_size)
            writer, shard_size = ArrayRecordWriter(shard_path(len(lengths)), "group_size:1"), 0
            lengths.append(0)
        writer.write(data)
        shard_size += len(data)
        lengths[-1] += 1
        kept.append(row)
        now = time.time()
        if now - last_print > 30:
            log(f"  {split}: {row + 1}/{total} images, {(row + 1) / (now - start):.0f} images/s")
            last_print = now
    if writer is not None:
        writer.close()
        shard_sizes.append(shard_size)
    manifest = os.path.join(out_dir, MANIFEST.format(split=split))
    write_manifest(manifest, missing)
    if not lengths:
        raise PrepareError(
            f"split {split!r}: none of its {total} images could be read; {manifest} lists each one "
            "with the reason (check --source / --images)"
        )
    for i in range(len(lengths)):  # final names now that the shard count is known
        os.replace(
            shard_path(i),
            os.path.join(out_dir, f"{tfds_name}-{split}.array_record-{i:05d}-of-{len(lengths):05d}"),
        )
    elapsed = time.time() - start
    log(
        f"  {split}: wrote {len(kept)} of {total} images in "
        f"{elapsed:.1f} s ({total / max(elapsed, 1e-9):.0f} images/s); "
        f"{sum(m[1] == 'missing' for m in missing)} missing, {sum(m[1] == 'unreadable' for m in missing)} unreadable"
    )
    return SplitResult(np.asarray(kept, np.int64), missing, lengths, sum(shard_sizes))


def write_manifest(path: str, missing: list) -> None:
    """image_id, status (missing | unreadable), reason: one line per row that was not written."""
    with open(path, "w") as f:
        f.write("image_id\tstatus\treason\n")
        for image_id, status, reason in missing:
            f.write(f"{image_id}\t{status}\t{' '.join(str(reason).split())}\n")


def read_manifest(path: str) -> list[tuple[str, str, str]]:
    with open(path) as f:
        next(f)
        return [tuple(line.rstrip("\n").split("\t")) for line in f]


def dataset_dir(data_dir: str, tfds_name: str) -> str:
    return os.path.join(os.path.expanduser(data_dir), tfds_name, VERSION)


def write_dataset(
    data_dir: str,
    tfds_name: str,
    splits: dict[str, SplitSource],
    *,
    num_classes: int,
    compress_labels: bool,
    description: str,
    max_short_side: int | None,
    workers: int,
    overwrite: bool,
    shard_bytes: int = SHARD_BYTES,
    image_format: str = "jpeg",
    finish: Callable[[str, dict], None] | None = None,
    quiet: bool = False,
) -> tuple[str, dict[str, SplitResult]]:
    """Writes every split into <data_dir>/<tfds_name>/1.0.0 (built in a temporary folder, renamed
    at the end, so an interrupted build never looks prepared, and an existing dataset is replaced
    only once its successor is complete). `finish(folder, results)` writes the extra files (class
    names, groups) before that rename. Returns (final folder, results)."""
    import tensorflow_datasets as tfds

    final = dataset_dir(data_dir, tfds_name)
    if os.path.exists(final) and not overwrite:
        raise FileExistsError(f"{final} already exists; pass --overwrite to rebuild it")
    # Outside <tfds_name>/ so that catalog.load_builder never picks up a half-written version.
    tmp = os.path.join(os.path.expanduser(data_dir), tfds_name + ".incomplete", VERSION)
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    feats = features(num_classes, compress_labels, image_format)
    results = {}
    log = (lambda line: None) if quiet else (lambda line: print(line, flush=True))
    for split, source in splits.items():
        log(f"{tfds_name} {split}: {len(source.paths)} images")
        results[split] = write_split(
            tmp,
            tfds_name,
            split,
            source,
            feats,
            max_short_side=max_short_side,
            workers=workers,
            shard_bytes=shard_bytes,
            log=log,
        )
    split_infos = [
        tfds.core.SplitInfo(name=s, shard_lengths=r.shard_lengths, num_bytes=r.num_bytes)
        for s, r in results.items()
    ]
    tfds.folder_dataset.write_metadata(
        data_dir=tmp,
        features=feats,
        split_infos=split_infos,
        version=VERSION,
        check_data=False,
        description=description,
    )
    if finish is not None:
        finish(tmp, results)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    replaced = os.path.join(os.path.dirname(os.path.dirname(tmp)), tfds_name + ".replaced")
    if os.path.exists(final):  # moved aside, deleted only once the new one is in place
        shutil.rmtree(replaced, ignore_errors=True)
        os.replace(final, replaced)
    os.replace(tmp, final)
    os.rmdir(os.path.dirname(tmp))
    shutil.rmtree(replaced, ignore_errors=True)
    return final, results


def default_workers() -> int:
    return os.cpu_count() or 1
