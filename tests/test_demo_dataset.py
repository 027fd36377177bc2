"""The offline `bridgegap_demo` dataset: determinism, splits, labels, and the round trip through the
writer and tfds."""

import numpy as np
import pytest

from bridgegap_jax import images
from bridgegap_jax.datasets import catalog
from bridgegap_jax.prepare import demo

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


def test_round_trip_through_the_prepared_dataset(tmp_path, mosaics):
    dataset = catalog.open_dataset("demo", str(tmp_path))  # builds it
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
