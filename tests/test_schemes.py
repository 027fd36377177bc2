"""The loss schemes against a plain NumPy transcription of docs/method.md ("Loss"), written independently
of losses.py and schemes/ (tests/test_faults.py trains with a scheme registered from outside)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bridgegap_jax.data.catalog import UNOBSERVED_VALUE
from bridgegap_jax.run import schemes


def reference_k(scheme, epoch, batch, classes, delta_rel):
    # The reference keeps clean_rate as a Python float, decremented after every epoch.
    if scheme == "AN":
        return 0
    clean_rate = 1.0
    for _ in range(1, epoch):
        clean_rate -= delta_rel
    if clean_rate == 1:
        return 0
    if scheme == "LL-Cp":
        return math.ceil(batch * classes * delta_rel)
    return math.ceil(batch * classes * (1 - clean_rate))


def reference_loss(z, y, scheme, k, unobserved_value):
    z = z.astype(np.float64)
    t = np.maximum(y, 0).astype(np.float64)
    bce = lambda target: np.maximum(z, 0) - z * target + np.log1p(np.exp(-np.abs(z)))
    loss, loss_cor = bce(t), bce(1 - t)
    unobserved = y == unobserved_value
    if k == 0:
        return loss.mean(), np.zeros_like(unobserved)
    u = np.where(unobserved, loss, 0.0)
    thr = np.sort(u.ravel())[::-1][k - 1]
    sel = unobserved & (u >= thr)
    final = np.where(sel, 0.0 if scheme == "LL-R" else loss_cor, loss)
    return final.mean(), sel


def random_batch(rng, batch, classes, encoding):
    # Logits on a coarse grid: many exactly equal losses, so the tie rule is exercised.
    z = rng.integers(-8, 9, size=(batch, classes)).astype(np.float32) / 4
    if encoding == "single_positive":
        y = np.zeros((batch, classes), np.int8)
        y[np.arange(batch), rng.integers(0, classes, batch)] = 1
    else:
        y = rng.choice(np.array([-1, 0, 1], np.int8), size=(batch, classes), p=[0.7, 0.2, 0.1])
    return z, y


@pytest.mark.parametrize("encoding", ["single_positive", "partial"])
@pytest.mark.parametrize("scheme", ["AN", "LL-R", "LL-Ct", "LL-Cp"])
def test_loss_matches_numpy_transcription(scheme, encoding):
    rng = np.random.default_rng(0)
    unobserved_value = UNOBSERVED_VALUE[encoding]
    delta_rel = {"AN": 0.0, "LL-R": 0.05, "LL-Ct": 0.02, "LL-Cp": 0.01}[scheme]  # larger: k matters
    strategy = schemes.create(scheme, delta_rel, unobserved_value)
    fn = jax.jit(strategy.loss)
    ties_seen = False
    for epoch in (1, 2, 3, 5, 8):
        for batch, classes in ((16, 20), (7, 20)):  # 7: a short last batch
            z, y = random_batch(rng, batch, classes, encoding)
            k = strategy.num_large_losses(epoch, batch, classes)
            assert k == reference_k(scheme, epoch, batch, classes, delta_rel)
            want_loss, want_sel = reference_loss(z, y, scheme, k, unobserved_value)
            got = fn(jnp.asarray(z), jnp.asarray(y), jnp.asarray(k, jnp.int32))
            np.testing.assert_allclose(float(got.loss), want_loss, rtol=1e-6)
            np.testing.assert_array_equal(np.asarray(got.selected), want_sel)
            ties_seen |= int(want_sel.sum()) > k
            if k == 0:
                assert not want_sel.any()
    if scheme != "AN":
        assert ties_seen, "the batches should include ties at the threshold"


def test_schedule_uses_the_reference_float_arithmetic():
    # 400 entries, LL-R: after one epoch 1 - 0.995 = 0.0050000000000000044, so k = ceil(2.0000000000000018) = 3.
    assert schemes.create("LL-R", 0.005).num_large_losses(2, 20, 20) == 3
    assert schemes.create("LL-R", 0.005).num_large_losses(1, 20, 20) == 0
    assert schemes.create("LL-Cp", 0.001).num_large_losses(1, 16, 80) == 0
    assert schemes.create("LL-Cp", 0.001).num_large_losses(7, 16, 80) == 2  # ceil(1.28), constant
    assert schemes.create("AN", 0.005).num_large_losses(9, 16, 80) == 0
    # The paper's rates are the defaults.
    assert {name: schemes.create(name).delta_rel for name in ("AN", "LL-R", "LL-Ct", "LL-Cp")} == {
        "AN": 0.0,
        "LL-R": 0.005,
        "LL-Ct": 0.002,
        "LL-Cp": 0.001,
    }


def test_only_unobserved_entries_are_selected():
    # Verified negatives (0 in the partial encoding) carry large losses but are never touched.
    z = jnp.asarray([[9.0, 9.0, 1.0, -3.0]])
    y = jnp.asarray([[0, 0, -1, 1]], jnp.int8)
    out = schemes.create("LL-R", unobserved_value=-1).loss(z, y, jnp.asarray(1))
    np.testing.assert_array_equal(np.asarray(out.selected), [[False, False, True, False]])
