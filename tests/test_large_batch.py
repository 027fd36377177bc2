"""Large-batch options: grouped large-loss selection equals separate small batches, learning-rate
scaling / warm-up / cosine decay, and a scheduled run that resumes exactly."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from helpers import Interrupted, interrupt_after

from bridgegap_jax import losses, schemes, steps, trainer


def random_batch(rng, rows, classes):
    logits = rng.integers(-8, 9, size=(rows, classes)).astype(np.float32) / 4  # coarse: many ties
    observed = np.zeros((rows, classes), np.int8)
    observed[np.arange(rows), rng.integers(0, classes, rows)] = 1
    return jnp.asarray(logits), jnp.asarray(observed)


@pytest.mark.parametrize("name", ["LL-R", "LL-Ct", "LL-Cp"])
@pytest.mark.parametrize("rows", [64, 56])  # 4 groups of 16; 3 of 16 and a last one of 8
def test_grouped_selection_equals_separate_batches_of_16(name, rows):
    rng = np.random.default_rng(rows)
    logits, observed = random_batch(rng, rows, 80)
    grouped = schemes.create(name, 0.01, group_size=16)
    ks = grouped.large_loss_counts(4, rows, 80)
    assert ks.tolist() == [
        grouped.num_large_losses(4, size, 80) for size in [16] * (rows // 16) + [8] * (rows % 16 > 0)
    ]
    out = jax.jit(grouped.loss)(logits, observed, jnp.asarray(ks))
    single = schemes.create(name, 0.01)  # the protocol: one batch at a time
    separate = []
    for start in range(0, rows, 16):
        part = slice(start, start + 16)
        k = single.num_large_losses(4, len(range(rows)[part]), 80)
        separate.append(single.loss(logits[part], observed[part], jnp.asarray(k)))
    np.testing.assert_array_equal(
        np.asarray(out.selected), np.concatenate([np.asarray(s.selected) for s in separate])
    )
    assert int(out.selected.sum()) > int(ks.sum()) * 0.9 > 0
    sizes = np.array([len(range(rows)[slice(s, s + 16)]) for s in range(0, rows, 16)])
    np.testing.assert_allclose(
        float(out.loss), np.sum([float(s.loss) for s in separate] * sizes) / rows, rtol=1e-5
    )


def test_whole_batch_selection_is_the_protocol():
    rng = np.random.default_rng(0)
    logits, observed = random_batch(rng, 16, 20)
    loss, _, unobserved = losses.assume_negative(logits, observed, 0)
    for k in (0, 1, 5, 40):
        u = np.where(unobserved, loss, 0.0).ravel()
        threshold = np.sort(u)[::-1][k - 1] if k else np.inf
        want = np.asarray(unobserved) & (np.asarray(loss) >= threshold)
        np.testing.assert_array_equal(losses.select_large_losses(loss, unobserved, jnp.asarray(k)), want)
        np.testing.assert_array_equal(
            losses.select_large_losses(loss, unobserved, jnp.asarray([k]), 16), want
        )


def test_learning_rate_scaling_warm_up_and_decay():
    protocol = steps.lr_schedule(1e-4)
    assert float(protocol(0)) == float(protocol(10_000)) == pytest.approx(1e-4)
    sqrt = steps.lr_schedule(1e-4, batch_size=256, scaling="sqrt", warmup_steps=100)
    assert float(sqrt(0)) == 0.0 and float(sqrt(50)) == pytest.approx(2e-4)  # halfway to 4e-4
    assert float(sqrt(100)) == float(sqrt(5000)) == pytest.approx(4e-4)  # sqrt(256 / 16) = 4
    linear = steps.lr_schedule(1e-4, batch_size=64, scaling="linear", warmup_steps=10, decay_steps=110)
    assert float(linear(10)) == pytest.approx(4e-4) and float(linear(60)) == pytest.approx(
        2e-4
    )  # cosine midpoint
    assert float(linear(110)) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="lr_scaling"):
        steps.lr_schedule(1e-4, scaling="cubic")


def final_params(workdir):
    manager = ocp.CheckpointManager(
        os.path.join(workdir, "checkpoints", "latest"), item_names=("state", "progress")
    )
    restored = manager.restore(
        manager.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore())
    )
    return restored["state"]["train"]


def test_a_scheduled_grouped_run_resumes_exactly(tiny_config, tmp_path, monkeypatch):
    """Warm-up, cosine decay, sqrt scaling and grouped selection at batch 64: interrupted mid-warm-up and
    resumed, the run ends with the uninterrupted run's parameters and optimizer step count."""
    c = tiny_config
    c.train.batch_size, c.train.lr_scaling, c.train.warmup_epochs, c.train.lr_decay = (
        64,
        "sqrt",
        0.5,
        "cosine",
    )
    c.loss.group_size, c.loss.delta_rel, c.train.checkpoint_every_steps = 16, 0.05, 5
    whole = trainer.train_and_evaluate(c, str(tmp_path / "whole"))
    interrupt_after(monkeypatch, 7)  # epoch 1 step 7: in the warm-up; the latest checkpoint is step 5
    with pytest.raises(Interrupted):
        trainer.train_and_evaluate(c, str(tmp_path / "split"))
    monkeypatch.undo()
    resumed = trainer.train_and_evaluate(c, str(tmp_path / "split"))
    assert resumed["test_map"] == whole["test_map"]
    a, b = final_params(str(tmp_path / "whole")), final_params(str(tmp_path / "split"))
    jax.tree.map(np.testing.assert_array_equal, a["params"], b["params"])
    jax.tree.map(np.testing.assert_array_equal, a["opt_state"], b["opt_state"])
