"""The offline `bridgegap_demo` dataset: determinism, splits, labels, tfds round trip."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from bridgegap_jax.datasets import demo

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


def test_tfds_round_trip(tmp_path, mosaics):
    demo.load_builder(str(tmp_path))
    ds = tfds.builder("bridgegap_demo", data_dir=str(tmp_path)).as_dataset(
        split="validation", shuffle_files=False
    )
    rows = list(tfds.as_numpy(ds))
    want = mosaics["validation"]
    assert len(rows) == len(want["index"])
    np.testing.assert_array_equal([r["index"] for r in rows], want["index"])
    np.testing.assert_array_equal(np.stack([r["labels"] for r in rows]), want["labels"])
    np.testing.assert_array_equal(np.stack([r["labels_obs"] for r in rows]), want["labels_obs"])
    np.testing.assert_array_equal(np.stack([r["image"] for r in rows]), want["images"])
    assert rows[5]["image_id"].decode() == want["image_id"][5]


def test_reimport_does_not_reregister():
    import importlib

    importlib.reload(demo)  # Would raise "already registered" without the guard.
    assert "bridgegap_demo" in tfds.list_builders(with_community_datasets=False)
