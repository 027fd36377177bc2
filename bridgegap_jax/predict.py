r"""Label new images with a trained run's best checkpoint (the one its test evaluated).

    python -m bridgegap_jax.predict --workdir=runs/NAME --images=photos/ --out=predictions.csv
    python -m bridgegap_jax.predict --workdir=runs/NAME --images='photos/**/*.jpg' --out=p.jsonl --top_k=3
    python -m bridgegap_jax.predict --workdir=runs/NAME --split=test --out=test.csv --cams=cams/

Images: --images=DIR (every file under it whose extension, in any case, is one of IMAGE_EXTENSIONS,
named by its path relative to DIR), --images=GLOB (`**` recurses; named as matched), or
--split=SPLIT of the run's prepared dataset (named by image_id: the file_name for a folder dataset).
Rows follow the sorted paths, or the split's stored order.

Exactly evaluation's arithmetic: images.decode_and_resize with the run's config.data.resize and
image_size (aspect ratio not kept, no flip), uint8 to the devices, normalisation inside the model,
and the probabilities of steps.jit_eval_step (the trainer's evaluation step) at the run's eval
batch, sharded over every device of this host, the last batch padded. --split=test therefore gives
the probabilities that the run's test evaluated.

Output (--out, .csv or .jsonl; written to a temporary file and renamed at the end, and an existing
file is replaced only with --overwrite):
  - by default every class's probability: CSV columns file_name, one per class, error; JSON lines
    {"file_name", "probabilities": {class: p}};
  - with --top_k=K and/or --threshold=T the K most probable classes (those with p >= T), most
    probable first: columns file_name, labels, probabilities, error. In CSV each list is joined by
    '|', the separator of `prepare folder`'s labels column, so the file can serve as its table;
  - an image that cannot be read keeps its row, with the reason in `error` and no probabilities.
Probabilities are written with 7 significant digits (float32 holds about 7.2).
--cams=DIR draws, per image, the BoostLU map of each predicted label (--top_k / --threshold, else
p >= 0.5; the MAX_CAMS most probable) over the image, as `python -m bridgegap_jax.explain` draws
them (cam_figures.py): one PNG per image with a label, named <row>_<file name>.png.
Progress (images/s, on stderr) is shown when stderr is a terminal, rewritten in place; --progress
prints it anyway, a line every 10 s; --no-progress never.
"""

from __future__ import annotations

import concurrent.futures
import csv
import datetime
import glob
import json
import os
import sys
import time

import numpy as np

from bridgegap_jax.base import sharding
from bridgegap_jax.base.errors import ArgumentParser, UserError
from bridgegap_jax.base.files import atomic_output
from bridgegap_jax.data import images
from bridgegap_jax.explain import cam_maps
from bridgegap_jax.explain.cam_figures import draw_cam_figure
from bridgegap_jax.run import steps, trained_run

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
FORMATS = (".csv", ".jsonl")
LIST_SEPARATOR = "|"  # prepare folder's labels separator (prepare/table.py)
CAM_THRESHOLD, MAX_CAMS = 0.5, 8


class PredictError(UserError, ValueError):
    """A mistake in predict's flags or inputs; the message says what to do."""


# ----------------------------------------------------------------------------------------------
# Inputs: names, and a reader of their encoded bytes
# ----------------------------------------------------------------------------------------------
def image_files(pattern: str) -> list[tuple[str, str]]:
    """(name, path) of the images of --images: a folder's image files, or a glob's matches."""
    pattern = os.path.expanduser(pattern)
    if os.path.isdir(pattern):
        found = []
        for root, _, files in os.walk(pattern):
            for file in files:
                if os.path.splitext(file)[1].lower() in IMAGE_EXTENSIONS:
                    path = os.path.join(root, file)
                    found.append((os.path.relpath(path, pattern).replace(os.sep, "/"), path))
        what = f"--images={pattern} holds no image file ({', '.join(IMAGE_EXTENSIONS)}, in any case)"
    else:
        found = [(path, path) for path in glob.glob(pattern, recursive=True) if os.path.isfile(path)]
        what = f"--images={pattern} is neither a folder nor a pattern that matches a file"
    if not found:
        raise PredictError(what)
    return sorted(found)


def read_file(path: str) -> bytes | str:
    """The file's bytes, or why it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return "missing: no such file"
    except OSError as error:
        return f"unreadable: {type(error).__name__}: {error.strerror}"


class SplitReader:
    """Encoded images of a prepared split, one chunk of rows at a time (the dataset's data source)."""

    def __init__(self, dataset, split: str):
        self.dataset, self.split = dataset, split
        self.source = dataset.source(split)
        self.names: list[str] = []

    def __call__(self, rows: range) -> list[bytes]:
        try:
            records = self.source.__getitems__(list(rows))
        except Exception as error:  # noqa: BLE001 - array_record reports damage as RuntimeError and others
            raise self.dataset.damaged(self.split, error) from None
        self.names += [r["image_id"].decode(errors="replace") for r in records]
        return [r["image"] for r in records]


def decode(data: bytes | str, size: int, method: str) -> np.ndarray | str:
    """(size, size, 3) uint8 as evaluation decodes it, or why it cannot be."""
    if isinstance(data, str):
        return data
    try:
        return images.decode_and_resize(data, size, method)
    except images.DecodeError as error:
        return f"unreadable: {error}"


# ----------------------------------------------------------------------------------------------
# Output rows
# ----------------------------------------------------------------------------------------------
def select(probabilities: np.ndarray, top_k: int | None, threshold: float | None) -> np.ndarray:
    """Class indices, most probable first: the top_k of those with p >= threshold (None: no limit)."""
    order = np.argsort(-probabilities, kind="stable")
    if threshold is not None:
        order = order[probabilities[order] >= threshold]
    return order[:top_k]


def _number(p: float) -> float:
    return float(f"{p:.7g}")


class RowWriter:
    """The rows of --out, in CSV or JSON lines, all classes or the selected ones."""

    def __init__(self, f, fmt: str, classes, top_k, threshold):
        self.f, self.fmt, self.classes = f, fmt, list(classes)
        self.listed = top_k is not None or threshold is not None
        self.top_k, self.threshold = top_k, threshold
        if fmt == ".csv":
            self.csv = csv.writer(f)
            header = ["labels", "probabilities"] if self.listed else self.classes
            self.csv.writerow(["file_name", *header, "error"])

    def write(self, name: str, probabilities: np.ndarray | None, error: str = "") -> None:
        if probabilities is None:
            if self.fmt == ".csv":
                self.csv.writerow([name, *[""] * (2 if self.listed else len(self.classes)), error])
            else:
                self.f.write(json.dumps({"file_name": name, "error": error}) + "\n")
            return
        if self.listed:
            chosen = select(probabilities, self.top_k, self.threshold)
            labels = [self.classes[c] for c in chosen]
            values = [_number(probabilities[c]) for c in chosen]
        else:
            labels, values = self.classes, [_number(p) for p in probabilities]
        if self.fmt == ".jsonl":
            row = {"labels": labels, "probabilities": values} if self.listed else dict(zip(labels, values))
            row = row if self.listed else {"probabilities": row}
            self.f.write(json.dumps({"file_name": name, **row}) + "\n")
        elif self.listed:
            joined = LIST_SEPARATOR.join(f"{v:.7g}" for v in values)
            self.csv.writerow([name, LIST_SEPARATOR.join(labels), joined, ""])
        else:
            self.csv.writerow([name, *[f"{v:.7g}" for v in values], ""])


class Progress:
    """'predict: N/M images, R images/s, ETA' on stderr: in place on a terminal, else every 10 s."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled = total, enabled
        self.tty = sys.stderr.isatty()
        self.start = self.last = time.perf_counter()
        self.width = 0

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if not self.enabled or (now - self.last < (0.5 if self.tty else 10) and done < self.total):
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        eta = datetime.timedelta(seconds=round((self.total - done) / max(rate, 1e-9)))
        line = f"predict: {done}/{self.total} images, {rate:.1f} images/s, ETA {eta}"
        self.width = max(self.width, len(line))  # a shorter line rewrites all of the longer one
        end = "\n" if not self.tty or done == self.total else ""
        print(("\r" + line.ljust(self.width)) if self.tty else line, end=end, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# The tool
# ----------------------------------------------------------------------------------------------
def predict(
    workdir: str,
    out: str,
    *,
    images_from: str | None = None,
    split: str | None = None,
    top_k: int | None = None,
    threshold: float | None = None,
    cams: str | None = None,
    batch_size: int | None = None,
    data_dir: str | None = None,
    progress: bool | None = None,
    overwrite: bool = False,
) -> dict:
    """Writes `out` (and the CAM figures); returns a summary {images, unreadable, seconds, ...}."""
    fmt = os.path.splitext(out)[1].lower()
    if fmt not in FORMATS:
        raise PredictError(f"--out={out} must end in .csv or .jsonl (the output's format)")
    if (images_from is None) == (split is None):
        raise PredictError(
            "give either --images=DIR|GLOB (files) or --split=SPLIT (the run's prepared dataset)"
        )
    if top_k is not None and top_k < 1:
        raise PredictError(f"--top_k={top_k} must be at least 1")
    if threshold is not None and not 0 <= threshold <= 1:
        raise PredictError(f"--threshold={threshold} must be a probability, in [0, 1]")
    if cams and os.path.isdir(cams) and os.listdir(cams) and not overwrite:
        raise PredictError(
            f"--cams={cams} is a folder that holds files; choose a new one, or pass --overwrite"
        )
    if os.path.exists(os.path.expanduser(out)) and not overwrite:
        raise PredictError(f"--out={out} exists; choose another --out, or pass --overwrite to replace it")
    files = image_files(images_from) if images_from is not None else None  # before the model: fail fast
    run = trained_run.open_run(workdir)
    dataset = trained_run.open_dataset(run, data_dir)  # the class names, and the split's images
    if split is not None and split not in dataset.split_sizes:
        raise PredictError(f"--split={split} is not one of {', '.join(dataset.split_sizes)}")
    mesh = sharding.make_mesh()
    batch = batch_size or run.config.train.eval_batch_size
    if batch < 1 or batch % mesh.size:
        raise PredictError(f"--batch_size={batch} must be a positive multiple of the {mesh.size} devices")
    model, variables = trained_run.restore(run, mesh)
    size, method = run.config.data.image_size, run.config.data.get("resize", "bilinear")
    if files is not None:
        names, total = [name for name, _ in files], len(files)
        read = lambda rows: [read_file(files[i][1]) for i in rows]  # noqa: E731
    else:
        reader = SplitReader(dataset, split)
        names, total, read = reader.names, dataset.split_sizes[split], reader
    eval_fn = steps.jit_eval_step(model, mesh)
    listed = top_k is not None or threshold is not None
    draw = CamDrawer(model, variables, mesh, size, dataset.class_names, cams) if cams else None
    chunks = [range(start, min(start + batch, total)) for start in range(0, total, batch)]
    meter = Progress(total, sys.stderr.isatty() if progress is None else progress)
    unreadable, start = 0, time.perf_counter()
    with atomic_output(out, overwrite=overwrite) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        rows = RowWriter(f, fmt, dataset.class_names, top_k, threshold)
        for chunk, decoded, ok, probs, host_images, device_images in batches(
            eval_fn, variables, mesh, read, chunks, batch, size, method
        ):
            by_image = dict(zip(ok, probs))
            for i, position in enumerate(chunk):
                if i in by_image:
                    rows.write(names[position], by_image[i])
                else:
                    unreadable += 1
                    rows.write(names[position], None, decoded[i])
            if draw is not None:
                cam_threshold = threshold if listed else CAM_THRESHOLD
                labels = [select(p, top_k, cam_threshold)[:MAX_CAMS] for p in probs]
                draw(
                    [chunk[i] for i in ok], [names[chunk[i]] for i in ok], host_images, device_images, labels
                )
            meter.update(chunk.stop)
    seconds = time.perf_counter() - start
    return {
        "out": out,
        "images": total,
        "unreadable": unreadable,
        "seconds": seconds,
        "best_step": run.best_step,
        "cam_figures": draw.count if draw is not None else 0,
    }


def batches(eval_fn, variables, mesh, read, chunks, batch: int, size: int, method: str):
    """Per chunk of rows: (chunk, decoded images or reasons, the readable ones' indices in the chunk,
    their probabilities, the padded uint8 batch on the host and on the devices). The next chunk is read
    and decoded (threads: OpenCV decodes without the GIL) while the devices run this one."""
    num_classes = variables["params"]["head"]["bias"].shape[0]
    no_labels = sharding.to_global(mesh, np.zeros((batch, num_classes), np.int8))  # the step's loss: ignored
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:

        def submit(chunk):
            return [pool.submit(decode, data, size, method) for data in read(chunk)]

        pending = submit(chunks[0])
        for c, chunk in enumerate(chunks):
            decoded = [future.result() for future in pending]
            ok = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
            host_images = np.zeros((batch, size, size, 3), np.uint8)  # unreadable and padding rows: zeros
            for row, i in enumerate(ok):
                host_images[row] = decoded[i]
            device_images = sharding.to_global(mesh, host_images)
            probs, _ = eval_fn(variables, device_images, no_labels)
            if c + 1 < len(chunks):
                pending = submit(chunks[c + 1])
            yield chunk, decoded, ok, sharding.to_host(probs)[: len(ok)], host_images, device_images


class CamDrawer:
    """One PNG per image: the BoostLU map (the one whose mean is the logit) of each of its labels."""

    def __init__(self, model, variables, mesh, size: int, class_names, out: str):
        self.fn = cam_maps.cam_fn(model, (model.alpha,), mesh, upsample_to=size)
        self.column = cam_maps.Column(f"BoostLU map (alpha {model.alpha:g})", "", model.alpha)
        self.variables, self.mesh, self.names, self.out = variables, mesh, list(class_names), out
        self.count = 0
        os.makedirs(out, exist_ok=True)

    def __call__(self, positions, names, host_images, device_images, labels) -> None:
        """The images of batch rows 0.. (at `positions` of the output, named `names`) and their labels."""
        chosen = np.zeros((len(host_images), len(self.names)), np.int8)
        for row, classes in enumerate(labels):
            chosen[row, classes] = 1
        if not chosen.any():
            return
        class_ids, valid = cam_maps.positive_class_ids(chosen, np.arange(len(chosen)) < len(labels))
        maps, probs = self.fn(self.variables, device_images, sharding.to_global(self.mesh, class_ids))
        maps, probs = sharding.to_host(maps)[0], sharding.to_host(probs)[0]  # (B, S, S, K), (B, K)
        for row, (position, name) in enumerate(zip(positions, names)):
            ks = np.flatnonzero(valid[row])
            if not len(ks):
                continue
            path = os.path.join(self.out, f"{position:06d}_{os.path.basename(name)}.png")
            draw_cam_figure(
                path,
                np.repeat(host_images[row][None], len(ks), axis=0),
                [(position, int(c)) for c in class_ids[row, ks]],
                np.moveaxis(maps[row][..., ks], -1, 0)[:, None],
                probs[row, ks][:, None],
                [self.column],
                self.names,
            )
            self.count += 1


def main(argv: list[str] | None = None) -> int:
    import argparse

    from absl import logging

    parser = ArgumentParser(
        prog="python -m bridgegap_jax.predict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workdir", required=True, help="the run (python -m bridgegap_jax.main --workdir)")
    parser.add_argument("--out", required=True, help="the predictions: FILE.csv or FILE.jsonl")
    parser.add_argument("--images", help="a folder of images, or a glob pattern (quote it; ** recurses)")
    parser.add_argument(
        "--split", help="instead of --images: a split of the run's dataset (train, validation, test)"
    )
    parser.add_argument("--top_k", type=int, help="write only the K most probable classes of each image")
    parser.add_argument("--threshold", type=float, help="write only the classes with a probability >= T")
    parser.add_argument(
        "--cams", help=f"a folder for the BoostLU maps of the predicted labels (at most {MAX_CAMS})"
    )
    parser.add_argument("--batch_size", type=int, help="images per step (default: the run's eval_batch_size)")
    parser.add_argument(
        "--data_dir", help="where the run's dataset is prepared (default: the run's data_dir)"
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress line with images/s on stderr (default: when stderr is a terminal)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --out (and write into a used --cams)"
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.set_verbosity(logging.ERROR)  # orbax logs every file it reads
    try:
        summary = predict(
            args.workdir,
            args.out,
            images_from=args.images,
            split=args.split,
            top_k=args.top_k,
            threshold=args.threshold,
            cams=args.cams,
            batch_size=args.batch_size,
            data_dir=args.data_dir,
            progress=args.progress,
            overwrite=args.overwrite,
        )
    except (UserError, OSError) as error:  # a flag, a run, an image folder, the disk: one line
        if args.debug:
            raise
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"error: interrupted; {args.out} was not written", file=sys.stderr)
        return 2
    rate = summary["images"] / max(summary["seconds"], 1e-9)
    cams = f"; {summary['cam_figures']} CAM figure(s) in {args.cams}" if args.cams else ""
    print(
        f"wrote {args.out}: {summary['images']} image(s), {summary['unreadable']} unreadable (listed with "
        f"the reason), with the best checkpoint of {args.workdir} (step {summary['best_step']}), "
        f"{summary['seconds']:.1f} s ({rate:.1f} images/s){cams}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
