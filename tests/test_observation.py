"""Bit-exactness of the single-positive observation generator."""

import numpy as np
import pytest

from bridgegap_jax.prepare.observation import observe_single_positive


def _reference(labels, num_pos, num_neg, seed, negative_shuffle=True):
    """Independent transcription of Cole et al.'s `observe_uniform`."""
    rng = np.random.RandomState(seed)
    out = np.zeros_like(labels)
    for i in range(len(labels)):
        pos = np.nonzero(labels[i, :] == 1)[0]
        rng.shuffle(pos)
        out[i, pos if num_pos == -1 else pos[:num_pos]] = 1
        if negative_shuffle:
            neg = np.nonzero(labels[i, :] == 0)[0]
            rng.shuffle(neg)
            out[i, neg if num_neg == -1 else neg[:num_neg]] = -1
    return out


def _random_labels(seed, n=300, c=20, p=0.15):
    labels = (np.random.default_rng(seed).random((n, c)) < p).astype(np.int8)
    labels[0] = 0  # Row without positives.
    labels[1] = 1  # Row with only positives.
    return labels


@pytest.mark.parametrize(
    "num_pos,num_neg,seed", [(1, 0, 1200), (1, 0, 7), (2, 3, 1200), (-1, 0, 1200), (1, -1, 3)]
)
def test_matches_reference(num_pos, num_neg, seed):
    labels = _random_labels(seed)
    got = observe_single_positive(labels, num_pos, num_neg, seed)
    want = _reference(labels, num_pos, num_neg, seed)
    assert got.dtype == np.int8
    np.testing.assert_array_equal(got, want)


def test_single_positive_properties():
    labels = _random_labels(0)
    obs = observe_single_positive(labels)
    n_pos = labels.sum(1)
    np.testing.assert_array_equal((obs == 1).sum(1), np.minimum(n_pos, 1))
    assert np.all(labels[obs == 1] == 1) and not np.any(obs == -1)


def test_negative_shuffle_matters():
    # Realistic: ~3 positives out of 80 classes (COCO-like), several hundred rows.
    labels = (np.random.default_rng(1).random((500, 80)) < 0.04).astype(np.int8)
    labels[np.arange(500), np.random.default_rng(2).integers(0, 80, 500)] = 1
    with_shuffle = observe_single_positive(labels)
    without = _reference(labels, 1, 0, 1200, negative_shuffle=False)
    assert not np.array_equal(with_shuffle, without)


@pytest.mark.parametrize("bad", [np.zeros(5), np.zeros((2, 3, 4)), np.array([[0, 2]]), np.array([[0, -1]])])
def test_bad_input_raises(bad):
    with pytest.raises(ValueError):
        observe_single_positive(bad)
