"""Build rate of `prepare` (images/s) on synthetic JPEGs of OpenImages-like and VOC-like sizes.

    python scripts/prepare_throughput.py [--count 120] [--workers 1 2]

Times writer.write_dataset end to end (read, full decode, re-encode to a 512 px shorter side
where larger, serialize, write tfrecords) on one split of synthetic photos-like JPEGs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from bridgegap_jax.data import writer

CASES = (  # (name, size, max_short_side)
    ("OpenImages-like 1024x768 -> re-encoded at 512", (1024, 768), 512),
    ("OpenImages-like 2048x1536 -> re-encoded at 512", (2048, 1536), 512),
    ("VOC-like 500x375, kept byte for byte", (500, 375), None),
)


def photos(folder: str, count: int, size) -> list[str]:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    w, h = size
    paths = []
    for i in range(min(count, 8)):  # 8 distinct images, repeated: generation is not what we time
        y, x = np.mgrid[0:h, 0:w] / max(w, h)
        base = np.stack(
            [np.sin(x * rng.uniform(2, 9) + c) * np.cos(y * rng.uniform(2, 9)) for c in range(3)], -1
        )
        img = Image.fromarray(
            np.clip(128 + 90 * base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        )
        draw = ImageDraw.Draw(img)
        for _ in range(12):
            x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
            draw.ellipse(
                [x0, y0, x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))],
                fill=tuple(int(v) for v in rng.integers(0, 256, 3)),
            )
        paths.append(os.path.join(folder, f"{i}.jpg"))
        img.save(paths[-1], quality=90)
    return [paths[i % len(paths)] for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=120)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    print("| images | workers | images/s | MiB/image in | KiB/image stored |\n|---|---|---|---|---|")
    for name, size, short_side in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            paths = photos(tmp, args.count, size)
            mib_in = np.mean([os.path.getsize(p) for p in paths]) / 2**20
            for workers in args.workers:
                source = writer.SplitSource(
                    [str(i) for i in range(len(paths))], paths, lambda r: (np.zeros(5000, np.int8),) * 2
                )
                start = time.perf_counter()
                folder, results = writer.write_dataset(
                    os.path.join(tmp, "tfds"),
                    "bridgegap_openimages",
                    {"train": source},
                    num_classes=5000,
                    compress_labels=True,
                    description="throughput",
                    max_short_side=short_side,
                    workers=workers,
                    overwrite=True,
                )
                rate = len(paths) / (time.perf_counter() - start)
                stored = results["train"].num_bytes / len(paths) / 1024
                print(f"| {name} | {workers} | {rate:.0f} | {mib_in:.2f} | {stored:.0f} |", flush=True)


if __name__ == "__main__":
    main()
