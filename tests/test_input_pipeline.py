"""The input pipeline over simulated processes, and simulated partial-label masks."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from bridgegap_jax import input_pipeline
from bridgegap_jax.datasets import catalog, masks

IMAGE_SIZE = 8  # decoding still happens; a tiny resize keeps it fast


@pytest.fixture(scope="module")
def builder(demo_data_dir):
    return catalog.load_builder("demo", demo_data_dir)


@pytest.fixture(scope="module")
def stored(builder):
    """labels / labels_obs of the train split by index."""
    ds = builder.as_dataset(
        split="train", shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()}
    )
    rows = sorted(tfds.as_numpy(ds), key=lambda r: r["index"])
    return {k: np.stack([r[k] for r in rows]) for k in ("labels", "labels_obs")}


def _epoch(builder, count, **kwargs):
    """One epoch read by `count` simulated processes: [(global index, labels by process)] per step."""
    streams = [
        list(
            input_pipeline.train_batches(
                builder,
                "train",
                label_key="labels_obs",
                batch_size=48,
                image_size=IMAGE_SIZE,
                seed=3,
                epoch=2,
                process_index=p,
                process_count=count,
                row_multiple=8,
                **kwargs,
            )
        )
        for p in range(count)
    ]
    assert len({len(s) for s in streams}) == 1
    steps = []
    for batches in zip(*streams):
        index = batches[0]["index"]
        for b in batches:  # every process sees the same global batch
            np.testing.assert_array_equal(b["index"], index)
            assert (
                b["image"].shape == (len(index) // count, IMAGE_SIZE, IMAGE_SIZE, 3)
                and b["image"].dtype == np.uint8
            )
        steps.append((index, np.concatenate([b["labels"] for b in batches])))
    return steps


@pytest.mark.parametrize("count", [1, 2, 8])
def test_train_epoch_covers_every_example_once(builder, stored, count):
    steps = _epoch(builder, count)
    index = np.concatenate([s[0] for s in steps])
    n = input_pipeline.num_examples(builder, "train")  # 1600 = 33 x 48 + 16: the last batch splits over 8
    np.testing.assert_array_equal(np.sort(index), np.arange(n))
    np.testing.assert_array_equal(np.concatenate([s[1] for s in steps]), stored["labels_obs"][index])
    if count == 8:  # same order whatever the process count
        one = np.concatenate([s[0] for s in _epoch(builder, 1)])
        np.testing.assert_array_equal(index, one)


@pytest.mark.parametrize("count", [1, 2, 8])
def test_eval_counts_every_example_once(builder, count):
    streams = [
        list(
            input_pipeline.eval_batches(
                builder, "test", batch_size=64, image_size=IMAGE_SIZE, process_index=p, process_count=count
            )
        )
        for p in range(count)
    ]
    masks_, indices = [], []
    for batches in zip(*streams):
        for b in batches:
            assert b["image"].shape == (64 // count, IMAGE_SIZE, IMAGE_SIZE, 3)
            np.testing.assert_array_equal(b["mask"], batches[0]["mask"])
        masks_.append(batches[0]["mask"])
        indices.append(batches[0]["index"])
    mask, index = np.concatenate(masks_), np.concatenate(indices)
    n = input_pipeline.num_examples(builder, "test")
    assert mask.sum() == n and len(mask) % 64 == 0
    np.testing.assert_array_equal(np.sort(index[mask]), np.arange(n))
    assert (index[~mask] == -1).all()


def test_simulated_single_positive_is_keyed_by_index(builder, stored):
    by_process_count = []
    for count in (1, 2):
        steps = _epoch(builder, count, observation="single_positive")
        index = np.concatenate([s[0] for s in steps])
        labels = np.empty_like(stored["labels"])
        labels[index] = np.concatenate([s[1] for s in steps])
        by_process_count.append(labels)
    np.testing.assert_array_equal(by_process_count[0], by_process_count[1])
    obs = by_process_count[0]
    np.testing.assert_array_equal((obs == 1).sum(1), 1)
    assert (stored["labels"][obs == 1] == 1).all() and set(np.unique(obs)) == {0, 1}
    # Another epoch (another order) observes the same labels.
    other = list(
        input_pipeline.train_batches(
            builder,
            "train",
            label_key="labels_obs",
            batch_size=400,
            image_size=IMAGE_SIZE,
            seed=9,
            epoch=5,
            observation="single_positive",
        )
    )
    for b in other:
        np.testing.assert_array_equal(b["labels"], obs[b["index"]])


def test_simulated_observation_needs_observed_training(builder):
    with pytest.raises(ValueError, match="train_labels"):
        next(
            input_pipeline.train_batches(
                builder,
                "train",
                label_key="labels",
                batch_size=8,
                image_size=8,
                seed=0,
                epoch=1,
                observation="fraction:0.5",
            )
        )


# ---- masks.observe directly -----------------------------------------------------------------
def _observe_all(labels, mode, encoding, seed=0, index=None):
    index = np.arange(len(labels)) if index is None else index
    return np.stack(
        [
            masks.observe(
                tf.constant(l), tf.constant(i, tf.int64), mode=mode, seed=seed, encoding=encoding
            ).numpy()
            for l, i in zip(labels, index)
        ]
    )


def _full_labels(n=40, c=12):
    rng = np.random.default_rng(0)
    labels = (rng.random((n, c)) < 0.3).astype(np.int8)
    labels[0] = 0  # no positive
    labels[1] = 1  # all positive
    return labels


def test_k_positives():
    labels = _full_labels()
    obs = _observe_all(labels, "k_positives:3", "single_positive")
    np.testing.assert_array_equal((obs == 1).sum(1), np.minimum(labels.sum(1), 3))
    assert (labels[obs == 1] == 1).all() and set(np.unique(obs)) <= {0, 1}
    # Keyed by (seed, index): the same row under another index or seed draws differently somewhere.
    assert not np.array_equal(
        obs, _observe_all(labels, "k_positives:3", "single_positive", index=np.arange(40) + 1)
    )
    assert not np.array_equal(obs, _observe_all(labels, "k_positives:3", "single_positive", seed=1))
    np.testing.assert_array_equal(obs, _observe_all(labels, "k_positives:3", "single_positive"))


def test_fraction_full_labels():
    labels = _full_labels()
    obs = _observe_all(labels, "fraction:0.25", "single_positive")
    np.testing.assert_array_equal((obs != 0).sum(1), 3)  # round(0.25 * 12)
    np.testing.assert_array_equal(obs[obs != 0] == 1, labels[obs != 0] == 1)  # known labels keep their value


def test_partial_encoding_draws_only_verified_labels():
    labels = np.full((30, 20), -1, np.int8)
    rng = np.random.default_rng(1)
    labels[rng.random(labels.shape) < 0.4] = 0
    labels[rng.random(labels.shape) < 0.2] = 1
    obs = _observe_all(labels, "fraction:0.5", "partial")
    verified = (labels != -1).sum(1)
    np.testing.assert_array_equal((obs != -1).sum(1), np.round(0.5 * verified).astype(int))
    assert (obs[obs != -1] == labels[obs != -1]).all()
    single = _observe_all(labels, "single_positive", "partial")
    np.testing.assert_array_equal((single == 1).sum(1), np.minimum((labels == 1).sum(1), 1))
    assert set(np.unique(single)) <= {-1, 1}


@pytest.mark.parametrize(
    "mode", ["k_positives:0", "k_positives:x", "fraction:0", "fraction:1.5", "half", "k_positives:2.0"]
)
def test_bad_modes(mode):
    with pytest.raises(ValueError, match="config.data.observation"):
        masks.parse(mode)
