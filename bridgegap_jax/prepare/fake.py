"""Tiny fakes of the official download layouts, for tests and for trying `prepare` offline.

    python -m bridgegap_jax.prepare.fake <voc|coco|cub|nuswide|openimages|folder> --out DIR

Each fake has a few dozen small JPEGs in the real folder layout and file formats, one listed
image missing and one corrupt (so the manifest path is exercised), and the quirks that decide row
order (VOC difficult-only images, COCO ids whose string order differs from their numeric order,
a CUB attribute line with an extra field). OpenImages lists all 5,000 trainable classes (a text
file: cheap) so the prepared fake has the real label width; annotations touch a few of them.
`folder` is your own data (`prepare folder`): the demo's digit mosaics as image files and a table.
`make` returns what prepare must produce, built from the generator's own truth, not the files.

    python -m bridgegap_jax.prepare.fake coco --out DIR --image_size 448 --num_images 1120

makes instead a clean COCO-layout set for throughput runs: N photo-like JPEGs with a 448 px shorter
side (4:3, as COCO's photos, so training decodes and resizes as it would real ones) in train2014/,
N/20 in val2014/, none missing or corrupt, so the prepared split sizes are exact.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from bridgegap_jax.prepare.formatted import VOC_CLASSES

PHOTO_QUALITY = 70  # ~29 KiB at 597x448: ~1,200 photos fit a 40 MiB folder


def photo_like_jpeg(seed: int, size: tuple[int, int] = (640, 480), quality: int = 90) -> bytes:
    """A JPEG with photo-like content (smooth gradients, shapes, sensor-like noise) of a realistic size:
    what the decoder and resize measurements use (tests, scripts/input_throughput.py)."""
    import io

    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    base = np.stack([np.sin(x * rng.uniform(2, 9) + c) * np.cos(y * rng.uniform(2, 9)) for c in range(3)], -1)
    img = Image.fromarray(np.clip(128 + 90 * base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        box = [x0, y0, x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))]
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def _jpeg(path: str, rng, size=None) -> None:
    from PIL import Image

    w, h = size or (int(rng.integers(40, 90)), int(rng.integers(40, 90)))
    base = rng.integers(0, 256, (1, 1, 3))
    pixels = np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG", quality=85)


def _photo(path: str, seed: int, short_side: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(photo_like_jpeg(seed, (round(short_side * 4 / 3), short_side), PHOTO_QUALITY))


def _break(root: str, missing: str, corrupt: str) -> None:
    """Remove one listed image and overwrite another with bytes no decoder accepts."""
    os.remove(os.path.join(root, missing))
    with open(os.path.join(root, corrupt), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 this is not a jpeg")


def _multi_hot(rng, n: int, c: int, p: float) -> np.ndarray:
    labels = (rng.random((n, c)) < p).astype(np.int8)
    labels[np.arange(n), rng.integers(0, c, n)] = 1  # at least one positive per row
    return labels


def make_voc(out: str, rng, sizes=(30, 14)) -> dict:
    root = os.path.join(out, "VOCdevkit", "VOC2012")
    truth = {}
    names_by_phase = {
        "train": [f"2008_{i:06d}" for i in range(sizes[0])],
        "val": [f"2007_{i:06d}" for i in range(sizes[1])],
    }
    for phase, names in names_by_phase.items():
        names = list(rng.permutation(names))  # the class lists are not in sorted order
        values = rng.choice([1, -1, -1, -1, 0], size=(len(names), len(VOC_CLASSES)))  # 0 = difficult
        values[0] = -1
        values[0, 3] = 0  # an image with only a difficult object: not a row
        values[1] = -1  # an image with no object of any class: not a row
        os.makedirs(os.path.join(root, "ImageSets", "Main"), exist_ok=True)
        for c, cls in enumerate(VOC_CLASSES):
            with open(os.path.join(root, "ImageSets", "Main", f"{cls}_{phase}.txt"), "w") as f:
                f.writelines(f"{n} {'' if v < 0 else ' '}{v}\n" for n, v in zip(names, values[:, c]))
        for n in names:
            _jpeg(os.path.join(root, "JPEGImages", n + ".jpg"), rng)
        rows = sorted(
            (n + ".jpg", (values[i] == 1).astype(np.int8))
            for i, n in enumerate(names)
            if (values[i] == 1).any()
        )
        truth[phase] = (np.array([r[0] for r in rows]), np.stack([r[1] for r in rows]))
    missing, corrupt = truth["train"][0][2], truth["val"][0][1]
    _break(os.path.join(root, "JPEGImages"), missing, corrupt)
    return {
        "formatted": truth,
        "missing": [missing],
        "corrupt": [corrupt],
        "image_root": os.path.join(root, "JPEGImages"),
    }


def make_coco(out: str, rng, sizes=(30, 14), photo_size: int | None = None) -> dict:
    """photo_size: photo-like JPEGs of that shorter side and nothing broken, instead of the small fakes."""
    # Real COCO category ids run 1..90 with gaps; the file lists them in id order.
    cat_ids = sorted(rng.choice(np.arange(1, 91), 80, replace=False).tolist())
    categories = [{"id": i, "name": f"category{i}", "supercategory": "thing"} for i in cat_ids]
    truth = {}
    os.makedirs(os.path.join(out, "annotations"), exist_ok=True)
    for phase, n in zip(("train", "val"), sizes):
        ids = rng.choice(
            [9, 25, 100, 1000, 30, 301, 4, 42, 420, 77] + list(range(5000, 5000 + 3 * n)),
            n + 2,
            replace=False,
        )
        labels = _multi_hot(rng, n, 80, 0.04)
        annotations, k = [], 0
        for row, image_id in enumerate(ids[:n]):
            for c in np.nonzero(labels[row])[0]:
                for _ in range(int(rng.integers(1, 3))):  # several instances of one category
                    annotations.append(
                        {"id": k, "image_id": int(image_id), "category_id": cat_ids[c], "bbox": [0, 0, 1, 1]}
                    )
                    k += 1
        rng.shuffle(annotations)
        images = [
            {"id": int(i), "file_name": f"COCO_{phase}2014_{int(i):012d}.jpg"} for i in ids
        ]  # last 2: no annotation
        with open(os.path.join(out, "annotations", f"instances_{phase}2014.json"), "w") as f:
            json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
        for i in ids:
            path = os.path.join(out, f"{phase}2014", f"COCO_{phase}2014_{int(i):012d}.jpg")
            if photo_size:
                _photo(path, int(rng.integers(2**31)), photo_size)
            else:
                _jpeg(path, rng)
        order = sorted(range(n), key=lambda r: str(ids[r]))
        truth[phase] = (
            np.array([f"{phase}2014/COCO_{phase}2014_{int(ids[r]):012d}.jpg" for r in order]),
            labels[order],
        )
    if photo_size:
        return {"formatted": truth, "missing": [], "corrupt": [], "image_root": out}
    missing, corrupt = truth["train"][0][0], truth["val"][0][3]
    _break(out, missing, corrupt)
    return {"formatted": truth, "missing": [missing], "corrupt": [corrupt], "image_root": out}


def make_cub(out: str, rng, num_images=40) -> dict:
    root = os.path.join(out, "CUB_200_2011")
    files = [f"{1 + i % 3:03d}.Bird_{i % 3}/Bird_{i % 3}_{i:04d}.jpg" for i in range(num_images)]
    is_train = rng.integers(0, 2, num_images)
    present = (rng.random((num_images, 312)) < 0.1).astype(np.int8)
    os.makedirs(os.path.join(root, "attributes"), exist_ok=True)
    with open(os.path.join(root, "images.txt"), "w") as f:
        f.writelines(f"{i + 1} {name}\n" for i, name in enumerate(files))
    with open(os.path.join(root, "train_test_split.txt"), "w") as f:
        f.writelines(f"{i + 1} {t}\n" for i, t in enumerate(is_train))
    with open(os.path.join(root, "attributes", "image_attribute_labels.txt"), "w") as f:
        for i in range(num_images):
            for a in range(312):
                extra = " 0" if (i, a) == (5, 7) else ""  # the official file has a few such lines
                f.write(
                    f"{i + 1} {a + 1} {present[i, a]}{extra} {int(rng.integers(1, 5))} {rng.random() * 20:.3f}\n"
                )
    with open(os.path.join(out, "attributes.txt"), "w") as f:
        f.writelines(f"{a + 1} has_attribute::value_{a}\n" for a in range(312))
    for name in files:
        _jpeg(os.path.join(root, "images", name), rng)
    train = is_train == 1
    truth = {
        "train": (np.array(files)[train], present[train]),
        "val": (np.array(files)[~train], present[~train]),
    }
    missing, corrupt = truth["train"][0][1], truth["val"][0][0]
    _break(os.path.join(root, "images"), missing, corrupt)
    return {
        "formatted": truth,
        "missing": [missing],
        "corrupt": [corrupt],
        "image_root": os.path.join(root, "images"),
    }


def make_nuswide(out: str, rng, sizes=(30, 14)) -> dict:
    """The benchmark ships NUS-WIDE as formatted npy files (float labels) plus the Flickr folder."""
    truth = {}
    for phase, n in zip(("train", "val"), sizes):
        images = np.array([f"concept{i % 3}/{phase}_{i:010d}.jpg" for i in range(n)])  # relative to Flickr/
        labels = _multi_hot(rng, n, 81, 0.03)
        np.save(os.path.join(out, f"formatted_{phase}_images.npy"), images)
        np.save(os.path.join(out, f"formatted_{phase}_labels.npy"), labels.astype(np.float64))
        for name in images:
            _jpeg(os.path.join(out, "Flickr", name), rng)
        truth[phase] = (images, labels)
    missing, corrupt = truth["train"][0][4], truth["val"][0][2]
    _break(os.path.join(out, "Flickr"), missing, corrupt)
    return {
        "formatted": truth,
        "missing": [missing],
        "corrupt": [corrupt],
        "image_root": os.path.join(out, "Flickr"),
    }


def make_openimages(out: str, rng, sizes=(40, 12, 12), num_classes=5000, used_classes=10) -> dict:
    mids = [f"/m/fake{c:04d}" for c in range(num_classes)]
    with open(os.path.join(out, "classes-trainable.txt"), "w") as f:
        f.writelines(m + "\n" for m in mids)
    with open(os.path.join(out, "class-descriptions.csv"), "w") as f:
        f.writelines(f'{m},"Class, number {c}"\n' for c, m in enumerate(mids))
        f.write("/m/untrainable,Not trainable\n")
    used = rng.choice(num_classes, used_classes, replace=False)
    truth, missing, corrupt = {}, {}, {}
    for split, n in zip(("train", "validation", "test"), sizes):
        ids = sorted(f"{int(x):016x}" for x in rng.choice(2**62, n, replace=False))
        labels = np.full((n, num_classes), -1, np.int8)
        lines = []
        for r, image_id in enumerate(ids):
            for c in rng.choice(used, int(rng.integers(0, 5)), replace=False):
                labels[r, c] = v = int(rng.random() < 0.6)
                lines.append(f"{image_id},verification,{mids[c]},{v}")
            lines.append(f"{image_id},verification,/m/untrainable,1")  # not a trainable class: ignored
        # A pair verified both ways (two sources): the positive wins.
        c = int(used[0])
        lines += [f"{ids[0]},crowdsource-verification,{mids[c]},0", f"{ids[0]},verification,{mids[c]},1"]
        labels[0, c] = 1
        order = rng.permutation(len(lines))
        os.makedirs(os.path.join(out, split), exist_ok=True)
        with open(os.path.join(out, split, "annotations-human.csv"), "w") as f:
            f.write("ImageID,Source,LabelName,Confidence\n")
            f.writelines(lines[i] + "\n" for i in order)
        for r, image_id in enumerate(ids):
            big = split == "train" and r == 3  # larger than 512: re-encoded at prepare time
            _jpeg(os.path.join(out, "images", split, image_id + ".jpg"), rng, (700, 600) if big else None)
        truth[split] = (np.array(ids), labels)
        missing[split], corrupt[split] = [ids[1]], [ids[2]]
        _break(os.path.join(out, "images", split), ids[1] + ".jpg", ids[2] + ".jpg")
    return {"labels": truth, "missing": missing, "corrupt": corrupt, "mids": mids}


def make_folder(out: str, rng) -> dict:
    """Your own data, faked: the demo's 2,400 digit mosaics as image files in nested folders (JPEG,
    PNG with an upper-case extension, WebP) and labels.csv in `prepare folder`'s labels layout: each
    image's digits as positives, three digits it lacks as negatives, the rest unknown. One listed
    image is missing and one is corrupt."""
    import csv

    from PIL import Image

    from bridgegap_jax.prepare import demo

    mosaics = [demo.make_mosaics(split) for split in demo.SPLIT_SIZES]
    images = np.concatenate([m["images"] for m in mosaics])
    labels = np.concatenate([m["labels"] for m in mosaics])
    formats = ((".jpg", "JPEG"), (".PNG", "PNG"), (".webp", "WEBP"))
    rows, names = [], []
    for i, (image, full) in enumerate(zip(images, labels)):
        extension, fmt = formats[i % len(formats)]
        name = f"batch {i // 500}/mosaic {i:04d}{extension}"
        os.makedirs(os.path.join(out, "images", os.path.dirname(name)), exist_ok=True)
        Image.fromarray(image).save(os.path.join(out, "images", name), format=fmt, quality=90)
        negatives = sorted(rng.choice(np.flatnonzero(full == 0), 3, replace=False))
        rows.append(
            [name] + ["|".join(demo.CLASS_NAMES[c] for c in k) for k in (np.flatnonzero(full), negatives)]
        )
        names.append(name)
    _break(os.path.join(out, "images"), names[3], names[5])
    with open(os.path.join(out, "labels.csv"), "w", newline="", encoding="utf-8") as f:
        table = csv.writer(f)
        table.writerow(["file_name", "labels", "negatives"])
        table.writerows(rows)
    return {"names": names, "labels": labels, "missing": [names[3]], "corrupt": [names[5]]}


MAKERS = {
    "folder": make_folder,
    "voc": make_voc,
    "coco": make_coco,
    "cub": make_cub,
    "nuswide": make_nuswide,
    "openimages": make_openimages,
}


def make(
    name: str, out: str, seed: int = 0, image_size: int | None = None, num_images: int | None = None
) -> dict:
    """The fake download of `name` in `out`. coco only: `image_size`, photo-like JPEGs of that shorter
    side and nothing broken; `num_images`, images in the train folder (the val folder gets N/20)."""
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed)
    if image_size is None and num_images is None:
        return MAKERS[name](out, rng)
    if name != "coco":
        raise ValueError(f"--image_size and --num_images make a COCO layout only, not {name}")
    sizes = (num_images, max(14, num_images // 20)) if num_images else (30, 14)
    return make_coco(out, rng, sizes, photo_size=image_size)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bridgegap_jax.prepare.fake",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", choices=sorted(MAKERS))
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--image_size",
        type=int,
        help="coco only: photo-like JPEGs with this shorter side (4:3), none missing or corrupt",
    )
    parser.add_argument(
        "--num_images",
        type=int,
        help="coco only: images in train2014/ (prepare splits them 80/20 "
        "into train and validation); val2014/, the test split, gets N/20 (at least 14)",
    )
    args = parser.parse_args(argv)
    if args.name != "coco" and (args.image_size or args.num_images):
        parser.error("--image_size and --num_images apply to coco only")
    if (args.image_size or 32) < 32 or (args.num_images or 10) < 10:
        parser.error("--image_size must be >= 32 and --num_images >= 10")
    make(args.name, args.out, args.seed, args.image_size, args.num_images)
    if args.name == "folder":
        source = f"--images={os.path.join(args.out, 'images')} --labels={os.path.join(args.out, 'labels.csv')} --name=digits"
    else:
        nuswide = " --images=" + os.path.join(args.out, "Flickr") if args.name == "nuswide" else ""
        source = f"--source={args.out}{nuswide}"
    print(
        f"fake {args.name} download layout in {args.out}; prepare it with: python -m bridgegap_jax.prepare "
        f"{args.name} {source} --data_dir=<tfds data_dir>"
    )


if __name__ == "__main__":
    main()
