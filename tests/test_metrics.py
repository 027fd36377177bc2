import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from bridgegap_jax.run.metrics import (
    average_precision,
    frequency_groups,
    mean_average_precision,
    summarize,
)


def _sk_ap(y, s):
    # sklearn warns (and returns 0) when there is no positive; compare to 0 directly.
    return average_precision_score(y, s) if y.any() else 0.0


def _random_problem(seed=0, n=200, c=40):
    rng = np.random.default_rng(seed)
    # Rounded scores -> many ties, which sklearn groups into one threshold.
    scores = np.round(rng.random((n, c)), 1)
    labels = rng.choice([-1, 0, 1], size=(n, c), p=[0.3, 0.5, 0.2])
    labels[:, 0] = 0  # class without positives
    labels[:, 1] = 1  # all positives
    labels[:, 2] = -1  # only unknowns
    scores[:, 3] = 0.5  # every score tied
    return scores, labels


def test_ap_matches_sklearn_with_ties():
    scores, labels = _random_problem()
    ap = average_precision(scores, labels)
    assert ap.shape == (scores.shape[1],)
    expected = [_sk_ap(labels[:, c] == 1, scores[:, c]) for c in range(scores.shape[1])]
    np.testing.assert_allclose(ap, expected, rtol=0, atol=1e-10)
    assert ap[0] == 0.0 and ap[2] == 0.0
    assert ap[1] == pytest.approx(1.0)
    assert np.isfinite(ap).all()


def test_masked_ap_matches_sklearn_on_subset():
    scores, labels = _random_problem(seed=1)
    mask = labels != -1
    # Scores lie on a 0.1 grid, so masked-out entries already tie with counted ones;
    # also push half of them to the top score, where they would change precision.
    top = ~mask & (np.arange(scores.shape[0])[:, None] % 2 == 0)
    scores[top] = 1.0
    assert (scores[mask] == 1.0).any() and top.any()
    ap = average_precision(scores, labels, mask=mask)
    for c in range(scores.shape[1]):
        m = mask[:, c]
        assert ap[c] == pytest.approx(_sk_ap(labels[m, c] == 1, scores[m, c]), abs=1e-10)


def test_chunking_does_not_change_result():
    scores, labels = _random_problem(seed=2, c=37)
    mask = labels != -1
    full = average_precision(scores, labels, mask, chunk_size=1000)
    for chunk in (1, 5, 16):
        # Only float summation order may differ between chunk widths.
        np.testing.assert_allclose(
            average_precision(scores, labels, mask, chunk_size=chunk), full, rtol=0, atol=1e-12
        )


def test_map_conventions():
    ap = np.array([0.5, 1.0, 0.0, 0.0])
    has_pos = np.array([True, True, True, False])
    res = mean_average_precision(ap, has_pos)
    assert res["map"] == pytest.approx(100 * 1.5 / 4)
    assert res["map_with_positives"] == pytest.approx(100 * 1.5 / 3)
    assert res["num_classes_without_positives"] == 1


def test_summarize_groups():
    labels = np.array([[1, 0, -1, 0], [0, 1, 0, 0], [1, 0, 1, 0]])
    scores = np.array([[0.9, 0.1, 0.8, 0.3], [0.2, 0.7, 0.4, 0.6], [0.6, 0.5, 0.9, 0.2]])
    groups = np.array([1, 1, 2, 2])
    out = summarize(scores, labels, mask=labels != -1, groups=groups)
    assert out["num_classes_without_positives"] == 1
    assert out["has_positive"].tolist() == [True, True, True, False]
    assert out["map"] == pytest.approx(100 * out["ap"].mean())
    assert out["map_with_positives"] == pytest.approx(100 * out["ap"][:3].mean())
    assert out["group1"]["map"] == pytest.approx(100 * out["ap"][:2].mean())
    assert out["group2"]["map"] == pytest.approx(100 * out["ap"][2:].mean())
    assert out["group2"]["map_with_positives"] == pytest.approx(100 * out["ap"][2])
    assert out["all"]["map"] == out["map"]


def test_frequency_groups_with_ties():
    counts = np.array([5, 1, 5, 0, 1, 9])
    g = frequency_groups(counts, num_groups=3)
    # Sorted ascending, ties by index: 3(0), 1(1), 4(1), 0(5), 2(5), 5(9)
    assert g.tolist() == [2, 1, 3, 1, 2, 3]
    assert np.bincount(g).tolist() == [0, 2, 2, 2]
    with pytest.raises(ValueError, match="equal groups"):
        frequency_groups(counts, num_groups=4)


def test_shape_mismatch_errors():
    with pytest.raises(ValueError, match=r"\(3, 2\).*\(3, 4\)"):
        average_precision(np.zeros((3, 4)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="mask shape"):
        average_precision(np.zeros((3, 4)), np.zeros((3, 4)), mask=np.ones((2, 4), bool))
    with pytest.raises(ValueError, match="2-D"):
        average_precision(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="groups shape"):
        summarize(np.zeros((3, 4)), np.zeros((3, 4)), groups=np.ones(3))
