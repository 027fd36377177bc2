"""Input pipeline images/s on ONE CPU core: our per-image work against the reference transform.

    python scripts/input_throughput.py [--images DIR] [--passes 5]
    python scripts/input_throughput.py --data_dir DIR [--dataset coco] [--workers 2]   # + the grain path

Rows, all on the same JPEGs held in memory (the CPU work, not the disk), the process pinned to one
core (as `taskset -c 0`), torch and OpenCV single-threaded:
  reference   PIL open + convert('RGB') + torchvision Resize((448, 448)) + RandomHorizontalFlip +
              ToTensor + Normalize, stacked by 16 as its DataLoader does. Without torch, a PIL +
              numpy emulation of it (Resize is PIL's resize(BILINEAR); ToTensor /255 into CHW
              float32; Normalize (x - mean) / std).
  ours        input_pipeline.BatchReader itself on an in-memory dataset: each training batch of 16
              decoded, resized to 448, flipped by its keyed draw and stacked into uint8, for
              config.data.resize = 'bilinear' (the default) and 'pil'.
  decode      images.decode alone (OpenCV, the default decoder).
Passes go round-robin over the rows and each row keeps its best pass: this machine's speed drifts,
and timing the rows one after another would hand one of them the slow period.

The second table is the mean absolute difference (grey levels, over all pixels of every 5th
image) from PIL's resize to 448, which is what torchvision's Resize computes on a PIL image.

Without --images, 200 photo-like JPEGs are made (100 of 640x480, 100 of 500x375: COCO / VOC sizes).
With --data_dir, the whole grain path (tfds source, worker processes, shared memory) is also timed
on a prepared dataset's training split with --workers processes; that row is not per core.
"""

from __future__ import annotations

import argparse
import glob
import io
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

import numpy as np

SIZE = 448
BATCH = 16
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def photo_jpegs(count: int = 200) -> list[bytes]:
    from bridgegap_jax.prepare.fake import photo_like_jpeg

    return [photo_like_jpeg(i, (640, 480) if i < count // 2 else (500, 375)) for i in range(count)]


def read_jpegs(folder: str) -> list[bytes]:
    paths = sorted(p for p in glob.glob(os.path.join(folder, "*")) if p.lower().endswith((".jpg", ".jpeg")))
    if not paths:
        raise SystemExit(f"error: no .jpg or .jpeg files in {folder}")
    out = []
    for path in paths:
        with open(path, "rb") as f:
            out.append(f.read())
    return out


class MemoryDataset:
    """What BatchReader reads from a prepared dataset, held in memory: a 'train' split of JPEGs."""

    def __init__(self, encoded: list[bytes], num_classes: int = 80):
        self.directory, self.num_classes, self.label_encoding = "(memory)", num_classes, "single_positive"
        self.split_sizes = {"train": len(encoded)}
        labels = np.zeros(num_classes, np.int8)
        self.records = [
            {"image": e, "image_id": str(i).encode(), "labels": labels, "labels_obs": labels}
            for i, e in enumerate(encoded)
        ]

    def source(self, split: str):
        return self

    def __getitems__(self, indices):
        return [self.records[i] for i in indices]


def batch_reader(encoded: list[bytes], resize: str):
    """input_pipeline.BatchReader over one training epoch of `encoded`; returns (reader, batches)."""
    from bridgegap_jax.data import input_pipeline

    options = input_pipeline.Options(image_size=SIZE, batch_size=BATCH, eval_batch_size=BATCH, resize=resize)
    batches = input_pipeline.steps_per_epoch(len(encoded), options)
    segments = [input_pipeline.Segment("train", batches, epoch=1)]
    reader = input_pipeline.BatchReader(MemoryDataset(encoded), segments, options)
    return reader, batches


def ours(encoded: list[bytes], resize: str):
    reader, batches = batch_reader(encoded, resize)

    def run() -> int:
        return sum(len(reader(position)["image"]) for position in range(batches))

    return run


def decode_only(encoded: list[bytes]):
    from bridgegap_jax.data import images

    def run() -> int:
        for data in encoded:
            images.decode(data)
        return len(encoded)

    return run


def torchvision_reference(encoded: list[bytes]):
    """The reference transform as shipped, batched with torch.stack as its DataLoader does."""
    import torch
    from PIL import Image
    from torchvision import transforms

    transform = transforms.Compose(
        [
            transforms.Resize((SIZE, SIZE)),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN.tolist(), STD.tolist()),
        ]
    )

    def run() -> int:
        batch = []
        for data in encoded:
            with Image.open(io.BytesIO(data)) as img:
                batch.append(transform(img.convert("RGB")))
            if len(batch) == BATCH:
                torch.stack(batch)
                batch = []
        if batch:
            torch.stack(batch)
        return len(encoded)

    return run


def emulated_reference(encoded: list[bytes]):
    """The reference transform in PIL + numpy, for a machine without torch."""
    from PIL import Image

    def run() -> int:
        rng, batch = np.random.default_rng(0), []
        for data in encoded:
            with Image.open(io.BytesIO(data)) as img:
                img = img.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)
            if rng.random() < 0.5:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
            x = np.asarray(img, np.float32).transpose(2, 0, 1) / 255.0  # ToTensor
            batch.append((x - MEAN[:, None, None]) / STD[:, None, None])  # Normalize
            if len(batch) == BATCH:
                np.stack(batch)
                batch = []
        if batch:
            np.stack(batch)
        return len(encoded)

    return run


def best_rates(rows: dict, passes: int) -> dict:
    """images/s of each row: the best of `passes` round-robin passes, after one warm-up pass."""
    for run in rows.values():
        run()
    rates = dict.fromkeys(rows, 0.0)
    for _ in range(passes):
        for name, run in rows.items():
            start = time.perf_counter()
            count = run()
            rates[name] = max(rates[name], count / (time.perf_counter() - start))
    return rates


def differences(encoded: list[bytes], have_torch: bool) -> dict:
    """Mean |x - PIL| in grey levels: each resize method at 448, and the default decoder alone."""
    from PIL import Image

    from bridgegap_jax.data import images

    diffs: dict[str, list[float]] = {}
    for data in encoded:
        with Image.open(io.BytesIO(data)) as img:
            rgb = img.convert("RGB")
        pil = np.asarray(rgb.resize((SIZE, SIZE), Image.BILINEAR), np.float32)
        found = {
            f"resize='{m}': decode + resize 448 vs PIL resize": images.decode_and_resize(data, SIZE, m)
            for m in images.RESIZE_METHODS
        }
        if have_torch:
            from torchvision import transforms

            key = "reference: torchvision Resize((448, 448)) vs PIL resize"
            found[key] = transforms.Resize((SIZE, SIZE))(rgb)
        for key, value in found.items():
            diffs.setdefault(key, []).append(float(np.abs(np.asarray(value, np.float32) - pil).mean()))
        decoded = images.decode(data).astype(np.float32)
        diffs.setdefault("decode only: OpenCV (images.decode) vs PIL", []).append(
            float(np.abs(decoded - np.asarray(rgb, np.float32)).mean())
        )
    return {key: float(np.mean(values)) for key, values in diffs.items()}


def grain_rate(data_dir: str, name: str, workers: int, batches: int, resize: str) -> tuple[float, int]:
    """images/s of the real Stream (tfds source, grain workers) over the first training batches."""
    from bridgegap_jax.data import catalog, input_pipeline

    dataset = catalog.open_dataset(name, data_dir)
    options = input_pipeline.Options(image_size=SIZE, batch_size=BATCH, eval_batch_size=BATCH, resize=resize)
    steps = input_pipeline.steps_per_epoch(dataset.split_sizes["train"], options)
    segments = [input_pipeline.Segment("train", steps, epoch) for epoch in (1, 2, 3)]
    reader = input_pipeline.BatchReader(dataset, segments, options)
    batches = min(batches, len(reader) - 2)
    with input_pipeline.Stream(reader, 0, workers) as stream:
        next(stream), next(stream)  # the workers' start-up
        start, count = time.perf_counter(), 0
        for batch in stream.take(batches):
            count += len(batch["image"])
        return count / (time.perf_counter() - start), count


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", help="folder of JPEGs (default: 200 photo-like ones)")
    parser.add_argument("--passes", type=int, default=5, help="timed round-robin passes (each row: its best)")
    parser.add_argument("--data_dir", help="also time the grain path on this prepared dataset folder")
    parser.add_argument("--dataset", default="coco", help="with --data_dir: its name (config.data.name)")
    parser.add_argument("--workers", type=int, default=2, help="with --data_dir: grain worker processes")
    parser.add_argument("--batches", type=int, default=40, help="with --data_dir: batches of 16 to time")
    args = parser.parse_args()

    cores = os.sched_getaffinity(0) if hasattr(os, "sched_setaffinity") else None
    if cores:  # before the libraries size their thread pools
        os.sched_setaffinity(0, {min(cores)})
    try:
        import torch
        import torchvision.transforms  # noqa: F401

        torch.set_num_threads(1)
        have_torch = True
    except ImportError:
        have_torch = False

    encoded = read_jpegs(args.images) if args.images else photo_jpegs()
    print(
        f"{len(encoded)} JPEGs, mean {np.mean([len(e) for e in encoded]) / 1024:.0f} KiB; one core; output "
        f"{SIZE}x{SIZE}, batch {BATCH}; torch {'present' if have_torch else 'absent: reference emulated'}"
    )
    if have_torch:
        reference = (
            "reference: PIL open + convert, torchvision Resize((448,448)), RandomHorizontalFlip, "
            "ToTensor, Normalize (torch, 1 thread)",
            torchvision_reference(encoded),
        )
    else:
        reference = (
            "reference, emulated (PIL + numpy): PIL open + convert, resize((448,448), BILINEAR), "
            "flip, ToTensor, Normalize",
            emulated_reference(encoded),
        )
    rows = dict(
        [
            reference,
            (
                "ours, resize='bilinear' (default): BatchReader, OpenCV decode + resize 448 + flip, uint8 batch",
                ours(encoded, "bilinear"),
            ),
            (
                "ours, resize='pil': BatchReader, PIL decode + resize 448 + flip, uint8 batch",
                ours(encoded, "pil"),
            ),
            ("decode only: OpenCV (images.decode)", decode_only(encoded)),
        ]
    )
    rates = best_rates(rows, args.passes)
    base = rates[reference[0]]
    print(f"\n| per-image work (best of {args.passes} passes) | images/s per core | vs reference |")
    print("|---|---|---|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.0f} | {rate / base:.2f}x |")
    default = rates[next(name for name in rates if "'bilinear'" in name)] / base
    print(
        f"\nresize='bilinear' (the default): {default:.2f}x the reference per core (goal >= 2x: "
        f"{'met' if default >= 2 else 'NOT met'})"
    )
    print("\n| pixel difference from PIL's resize at 448 | mean abs (grey levels) |\n|---|---|")
    for name, value in differences(encoded[::5], have_torch).items():
        print(f"| {name} | {value:.3f} |")

    if args.data_dir:
        if cores:  # the workers inherit this process's cores
            os.sched_setaffinity(0, cores)
        rate, count = grain_rate(args.data_dir, args.dataset, args.workers, args.batches, "bilinear")
        print(
            f"\ngrain path, {args.dataset} in {args.data_dir}: {args.workers} worker process(es), resize "
            f"'bilinear', {count} images: {rate:.0f} images/s ({rate / base:.2f}x the reference's one core)"
        )


if __name__ == "__main__":
    main()
