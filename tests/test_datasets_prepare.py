"""prepare: fakes in each official layout -> tfds ArrayRecord folders with the benchmark's rows and labels."""

import os

import numpy as np
import pytest

from bridgegap_jax.data import catalog
from bridgegap_jax.prepare import cli, fake, writer
from bridgegap_jax.run import metrics

SINGLE_POSITIVE = ("voc", "coco", "cub", "nuswide")


def _spec2_observation(labels):
    """docs/method.md ("Labels"), transcribed independently: fresh RandomState(1200); per row shuffle positives, keep
    the first; then shuffle negatives (consuming state) and keep none."""
    rng = np.random.RandomState(1200)
    out = np.zeros(labels.shape, np.int8)
    for i, row in enumerate(labels):
        pos = np.flatnonzero(row == 1)
        rng.shuffle(pos)
        out[i, pos[:1]] = 1
        neg = np.flatnonzero(row == 0)
        rng.shuffle(neg)
    return out


def _expected_splits(truth):
    """docs/method.md ("Protocol"): observation per formatted file, then the 80/20 split of the train file."""
    images, labels = truth["train"]
    n = len(images)
    n_val = int(round(0.2 * n))
    perm = np.random.RandomState(1200).permutation(n)
    train, val = np.sort(perm[: n - n_val]), np.sort(perm[n - n_val :])
    obs = {phase: _spec2_observation(truth[phase][1]) for phase in ("train", "val")}
    return {
        "train": (images[train], labels[train], obs["train"][train]),
        "validation": (images[val], labels[val], obs["train"][val]),
        "test": (truth["val"][0], truth["val"][1], obs["val"]),
    }


def _rows(dataset, split):
    source = dataset.source(split)
    rows = source.__getitems__(list(range(len(source))))
    return {
        "image_id": np.array([r["image_id"].decode() for r in rows]),
        "labels": np.stack([r["labels"] for r in rows]),
        "labels_obs": np.stack([r["labels_obs"] for r in rows]),
        "index": np.array([r["index"] for r in rows]),
        "image": [r["image"] for r in rows],
    }


def _prepare(name, source, data_dir, *extra):
    assert cli.main([name, f"--source={source}", f"--data_dir={data_dir}", "--workers=1", *extra]) == 0
    return catalog.open_dataset(name, data_dir)


@pytest.fixture(scope="module", params=SINGLE_POSITIVE)
def single_positive(request, tmp_path_factory):
    name = request.param
    root = tmp_path_factory.mktemp(name)
    made = fake.make(name, str(root / "download"))
    extra = [f"--images={made['image_root']}"] if name == "nuswide" else []
    return name, made, _prepare(name, root / "download", str(root / "tfds"), *extra)


def test_single_positive_rows_labels_and_observation(single_positive):
    name, made, builder = single_positive
    dropped = set(made["missing"]) | set(made["corrupt"])
    seen_dropped = set()
    for split, (images, labels, obs) in _expected_splits(made["formatted"]).items():
        got = _rows(builder, split)
        keep = np.array([i not in dropped for i in images])
        seen_dropped |= set(images[~keep])
        np.testing.assert_array_equal(got["image_id"], images[keep])
        np.testing.assert_array_equal(got["labels"], labels[keep])
        np.testing.assert_array_equal(got["labels_obs"], obs[keep])
        np.testing.assert_array_equal(got["index"], np.arange(keep.sum()))
        assert builder.split_sizes[split] == keep.sum()
        if split == "train":
            np.testing.assert_array_equal((got["labels_obs"] == 1).sum(1), 1)
    assert seen_dropped == dropped  # the fake's missing and corrupt images are rows of some split


def test_single_positive_manifest_and_class_names(single_positive):
    name, made, builder = single_positive
    listed = {}
    for split in ("train", "validation", "test"):
        for image_id, status, _ in writer.read_manifest(
            os.path.join(builder.directory, f"missing_{split}.tsv")
        ):
            listed[image_id] = status
    assert listed == {**{m: "missing" for m in made["missing"]}, **{c: "unreadable" for c in made["corrupt"]}}
    names = builder.class_names
    assert len(names) == catalog.spec(name).num_classes
    if name == "voc":
        assert names[0] == "aeroplane" and names[-1] == "tvmonitor"
    if name == "cub":
        assert names[0] == "has_attribute::value_0"


def test_images_kept_byte_for_byte(single_positive):
    name, made, builder = single_positive
    got = _rows(builder, "test")
    path = os.path.join(made["image_root"], got["image_id"][0])
    with open(path, "rb") as f:
        assert got["image"][0] == f.read()


@pytest.mark.parametrize(
    "single_positive", ["voc", "coco", "cub"], indirect=True
)  # NUS-WIDE is always formatted
def test_formatted_folder_as_is_matches_official_layout(single_positive, tmp_path):
    """A formatted-npy folder (+ --images) prepares to the same rows as the official layout."""
    name, made, builder = single_positive
    folder = tmp_path / "formatted"
    folder.mkdir()
    for phase, (images, labels) in made["formatted"].items():
        np.save(folder / f"formatted_{phase}_images.npy", images)
        np.save(folder / f"formatted_{phase}_labels.npy", labels.astype(np.float64))
    other = _prepare(name, folder, str(tmp_path / "tfds"), f"--images={made['image_root']}")
    for split in ("train", "test"):
        a, b = _rows(builder, split), _rows(other, split)
        for key in ("image_id", "labels", "labels_obs", "index"):
            np.testing.assert_array_equal(a[key], b[key])


def test_stored_observation_is_used_as_is(tmp_path):
    made = fake.make("nuswide", str(tmp_path / "download"))
    images, labels = made["formatted"]["train"]
    stored = np.zeros_like(labels)
    stored[np.arange(len(labels)), labels.argmax(1)] = 1  # differs from the generator's choice
    np.save(tmp_path / "download" / "formatted_train_labels_obs.npy", stored.astype(np.float64))
    builder = _prepare(
        "nuswide", tmp_path / "download", str(tmp_path / "tfds"), f"--images={made['image_root']}"
    )
    got = _rows(builder, "train")
    rows = np.load(os.path.join(builder.directory, "file_rows_train.npy"))
    np.testing.assert_array_equal(got["labels_obs"], stored[rows])
    np.testing.assert_array_equal(got["image_id"], images[rows])


@pytest.mark.parametrize("single_positive", ["voc"], indirect=True)  # the same code for every dataset
def test_existing_dataset_needs_overwrite(single_positive, capsys):
    name, made, builder = single_positive
    data_dir = os.path.dirname(os.path.dirname(builder.directory))
    assert cli.main([name, f"--source={os.path.dirname(made['image_root'])}", f"--data_dir={data_dir}"]) == 2
    assert "--overwrite" in capsys.readouterr().err


@pytest.fixture(scope="module")
def openimages(tmp_path_factory):
    root = tmp_path_factory.mktemp("openimages")
    made = fake.make("openimages", str(root / "download"))
    # Two worker processes: the parallel path must keep the row order too.
    assert (
        cli.main(
            ["openimages", f"--source={root / 'download'}", f"--data_dir={root / 'tfds'}", "--workers=2"]
        )
        == 0
    )
    return made, catalog.open_dataset("openimages", str(root / "tfds"))


def test_openimages_labels_and_manifest(openimages):
    made, builder = openimages
    for split in ("train", "validation", "test"):
        ids, labels = made["labels"][split]
        dropped = set(made["missing"][split]) | set(made["corrupt"][split])
        keep = np.array([i not in dropped for i in ids])
        got = _rows(builder, split)
        np.testing.assert_array_equal(got["image_id"], ids[keep])
        np.testing.assert_array_equal(got["labels"], labels[keep])
        np.testing.assert_array_equal(got["labels_obs"], labels[keep])
        np.testing.assert_array_equal(got["index"], np.arange(keep.sum()))
        manifest = writer.read_manifest(os.path.join(builder.directory, f"missing_{split}.tsv"))
        assert {(m[0], m[1]) for m in manifest} == (
            {(i, "missing") for i in made["missing"][split]}
            | {(i, "unreadable") for i in made["corrupt"][split]}
        )


def test_openimages_frequency_groups_and_names(openimages):
    made, builder = openimages
    ids, labels = made["labels"]["train"]
    dropped = set(made["missing"]["train"]) | set(made["corrupt"]["train"])
    keep = np.array([i not in dropped for i in ids])
    counts = (labels[keep] == 1).sum(0)
    table = np.genfromtxt(
        os.path.join(builder.directory, "class_frequency.tsv"),
        delimiter="\t",
        skip_header=1,
        usecols=(0, 3, 4),
        dtype=np.int64,
    )
    np.testing.assert_array_equal(table[:, 0], np.arange(5000))
    np.testing.assert_array_equal(table[:, 1], counts)
    np.testing.assert_array_equal(table[:, 2], (labels == 1).sum(0))
    groups = builder.groups
    np.testing.assert_array_equal(groups, metrics.frequency_groups(counts, 5))
    assert np.bincount(groups)[1:].tolist() == [1000] * 5
    assert builder.class_names[7] == "Class, number 7"


def test_openimages_large_images_are_shrunk(openimages):
    import io

    from PIL import Image

    made, builder = openimages
    got = _rows(builder, "train")
    sizes = [Image.open(io.BytesIO(b)).size for b in got["image"]]
    assert (700, 600) not in sizes and (597, 512) in sizes  # 700x600 -> shorter side 512


@pytest.mark.parametrize(
    "fmt, max_short_side, kept",
    [("JPEG", None, True), ("PNG", None, False), ("WEBP", None, False), ("JPEG", 24, False)],
    ids=["jpeg kept", "png re-encoded", "webp re-encoded", "jpeg shrunk"],
)
def test_a_photo_with_exif_orientation_is_stored_upright(tmp_path, fmt, max_short_side, kept):
    """A JPEG is kept byte for byte, its orientation tag with it (both decoders apply it); an image that
    is re-encoded (another format, or shrunk) loses its EXIF, so its pixels are turned upright first."""
    from helpers import sideways_photo, upright_picture

    from bridgegap_jax.data import images
    from bridgegap_jax.prepare import image_files

    path = tmp_path / f"portrait.{fmt.lower()}"
    path.write_bytes(sideways_photo(6, fmt))
    status, stored = image_files.process(str(path), max_short_side)
    assert status == "ok" and (stored == path.read_bytes()) == kept
    for method in images.RESIZE_METHODS:
        upright = images.decode(stored, method).astype(int)
        if max_short_side is None:
            assert upright.shape == (80, 40, 3) and np.abs(upright - upright_picture()).mean() < 3
        else:  # shorter side 24, still a portrait, the red square top left
            assert upright.shape == (48, 24, 3) and upright[0, 0, 0] > 150 > upright[0, 0, 1]
