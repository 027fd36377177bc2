"""The built-in datasets: the demo (determinism, splits, labels, the round trip through the writer
and tfds) and the letters of the source task."""

import dataclasses
import errno

import numpy as np
import pytest

from bridgegap_jax.data import catalog, images
from bridgegap_jax.prepare import built_in, demo, letters
from bridgegap_jax.prepare import mosaics as mosaic_builder  # `mosaics` is the demo's fixture

SPLITS = ("train", "validation", "test")


@pytest.fixture(scope="module")
def mosaics():
    return {s: demo.make_mosaics(s) for s in SPLITS}


def test_deterministic(mosaics):
    again = demo.make_mosaics("train")
    for k, v in mosaics["train"].items():
        np.testing.assert_array_equal(v, again[k])


def test_source_digits_disjoint():
    idx = {s: set(demo.source_digit_indices(s).tolist()) for s in SPLITS}
    assert not idx["train"] & idx["validation"]
    assert not idx["train"] & idx["test"]
    assert not idx["validation"] & idx["test"]
    assert set.union(*idx.values()) == set(range(1797))


@pytest.mark.parametrize("split", SPLITS)
def test_shapes_and_labels(mosaics, split):
    d = mosaics[split]
    n = demo.SPLIT_SIZES[split]
    assert d["images"].shape == (n, 96, 96, 3) and d["images"].dtype == np.uint8
    assert d["labels"].shape == (n, 10) and d["labels"].dtype == np.int8
    np.testing.assert_array_equal(d["index"], np.arange(n))
    assert d["image_id"][17] == f"{split}_000017"
    n_pos = d["labels"].sum(1)
    assert n_pos.min() >= 1 and n_pos.max() <= 4
    if split == "train":
        np.testing.assert_array_equal((d["labels_obs"] == 1).sum(1), 1)
        assert np.all(d["labels"][d["labels_obs"] == 1] == 1)
        assert set(np.unique(d["labels_obs"])) == {0, 1}
    else:
        np.testing.assert_array_equal(d["labels_obs"], d["labels"])


def test_a_failed_build_on_first_use_keeps_its_one_line_error(tmp_path):
    """The prepare command's error line, as catalog.build_built_in turns it into this process's error."""
    data_dir = str(tmp_path)
    full = catalog.built_in_failure("demo", data_dir, "error: [Errno 28] No space left on device: '/d/x'\n")
    assert isinstance(full, OSError) and full.errno == errno.ENOSPC  # main names the full disk
    denied = catalog.built_in_failure("demo", data_dir, "error: [Errno 13] Permission denied: '/d'\n")
    assert isinstance(denied, catalog.DataError) and str(denied) == (
        f"cannot build the demo dataset in config.data.data_dir={data_dir!r} (Permission denied: '/d'); "
        "point --config.data.data_dir at a folder you can write to"
    )
    crash = catalog.built_in_failure(
        "demo", data_dir, "Traceback (most recent call last):\nZeroDivisionError\n"
    )
    assert type(crash) is RuntimeError and "ZeroDivisionError" in str(crash)  # a bug: its traceback


@pytest.mark.slow
def test_round_trip_through_the_prepared_dataset(tmp_path, mosaics, capsys):
    dataset = catalog.open_dataset("demo", str(tmp_path))  # builds it, with the prepare command
    assert capsys.readouterr().out == f"built the demo dataset in {dataset.directory}\n"
    assert dataset.image_format == "png" and dataset.class_names == demo.CLASS_NAMES
    assert dataset.split_sizes == demo.SPLIT_SIZES
    source = dataset.source("validation")
    rows = source.__getitems__(list(range(len(source))))
    want = mosaics["validation"]
    assert len(rows) == len(want["index"])
    np.testing.assert_array_equal([r["index"] for r in rows], want["index"])
    np.testing.assert_array_equal(np.stack([r["labels"] for r in rows]), want["labels"])
    np.testing.assert_array_equal(np.stack([r["labels_obs"] for r in rows]), want["labels_obs"])
    for method in images.RESIZE_METHODS:  # PNG is lossless: the decoded images are the mosaics
        np.testing.assert_array_equal(
            np.stack([images.decode(r["image"], method) for r in rows]), want["images"]
        )
    assert rows[5]["image_id"].decode() == want["image_id"][5]


# --- the letters (source task), drawn by the same mosaic builder ----------------------------------


def test_every_built_in_dataset_is_in_the_catalog_with_its_classes():
    assert set(built_in.SETS) == set(catalog.BUILT_IN)
    for name, mosaic_set in built_in.SETS.items():
        assert catalog.spec(name).num_classes == mosaic_set.num_classes


@pytest.mark.slow
def test_letters_render_deterministically_and_the_splits_share_no_glyph():
    again = letters.letter_glyphs.__wrapped__("validation")  # rendered anew, not the cached bank
    for cached, fresh in zip(letters.letter_glyphs("validation"), again):
        np.testing.assert_array_equal(cached, fresh)
    assert [len(b) for b in again] == [letters.GLYPHS_PER_CLASS["validation"]] * 26
    for bank in again:
        assert bank.shape[1:] == (24, 24) and 0 <= bank.min() and bank.max() <= 1
        assert np.all(bank.reshape(len(bank), -1).max(1) > 0.9)  # every glyph drawn
    seen = {g.tobytes() for bank in letters.letter_glyphs("test") for g in bank}
    assert not seen & {g.tobytes() for bank in again for g in bank}


@pytest.mark.slow
def test_letters_round_trip_with_full_labels_on_every_split(tmp_path):
    small = dataclasses.replace(letters.LETTERS, sizes={"train": 40, "validation": 16, "test": 16})
    mosaic_builder.build(small, str(tmp_path))
    dataset = catalog.open_dataset("letters", str(tmp_path))
    assert dataset.class_names == letters.CLASS_NAMES and dataset.split_sizes == small.sizes
    for split in SPLITS:
        want = mosaic_builder.make_mosaics(
            letters.LETTERS, split, small.sizes[split]
        )  # the first of the full split
        rows = dataset.source(split).__getitems__(list(range(small.sizes[split])))
        labels = np.stack([r["labels"] for r in rows])
        np.testing.assert_array_equal(labels, want["labels"])
        np.testing.assert_array_equal(np.stack([r["labels_obs"] for r in rows]), labels)
        assert 1 <= labels.sum(1).min() and labels.sum(1).max() <= 4
        np.testing.assert_array_equal(
            np.stack([images.decode(r["image"], "bilinear") for r in rows]), want["images"]
        )
