"""Large-batch options: grouped large-loss selection equals separate small batches, learning-rate
scaling / warm-up / cosine decay (tests/test_trainer.py resumes a run with all of them on), and the
shipped configs, the pod recipe among them."""

import importlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bridgegap_jax.run import configuration, losses, optimizer, schemes


def random_batch(rng, rows, classes):
    logits = rng.integers(-8, 9, size=(rows, classes)).astype(np.float32) / 4  # coarse: many ties
    observed = np.zeros((rows, classes), np.int8)
    observed[np.arange(rows), rng.integers(0, classes, rows)] = 1
    return jnp.asarray(logits), jnp.asarray(observed)


@pytest.mark.parametrize("name", ["LL-R", "LL-Ct", "LL-Cp"])
@pytest.mark.parametrize("rows", [64, 56])  # 4 groups of 16; 3 of 16 and a last one of 8
@pytest.mark.slow
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
    protocol = optimizer.lr_schedule(1e-4)
    assert float(protocol(0)) == float(protocol(10_000)) == pytest.approx(1e-4)
    sqrt = optimizer.lr_schedule(1e-4, batch_size=256, scaling="sqrt", warmup_steps=100)
    assert float(sqrt(0)) == 0.0 and float(sqrt(50)) == pytest.approx(2e-4)  # halfway to 4e-4
    assert float(sqrt(100)) == float(sqrt(5000)) == pytest.approx(4e-4)  # sqrt(256 / 16) = 4
    linear = optimizer.lr_schedule(1e-4, batch_size=64, scaling="linear", warmup_steps=10, decay_steps=110)
    assert float(linear(10)) == pytest.approx(4e-4) and float(linear(60)) == pytest.approx(
        2e-4
    )  # cosine midpoint
    assert float(linear(110)) == pytest.approx(0.0, abs=1e-12)


CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


@pytest.mark.parametrize(
    "name", sorted(n[:-3] for n in os.listdir(CONFIGS) if n[0] != "_" and n.endswith(".py"))
)
def test_every_shipped_config_passes_the_checks(name):
    config = importlib.import_module(f"configs.{name}").get_config()
    if name == "folder":  # the dataset comes from the command line (tests/test_folder_table.py: its message)
        config.data.name = "folder:example"
    configuration.check(config)


def test_the_pod_recipe_is_the_protocol_in_groups_of_16_in_its_epochs_with_lars():
    from configs import openimages, openimages_pod

    protocol, pod = openimages.get_config(), openimages_pod.get_config()
    assert pod.train.batch_size == 512 and pod.model.bn_group_size == pod.loss.group_size == 16
    assert pod.train.num_epochs == protocol.train.num_epochs  # 32x fewer steps
    assert pod.train.optimizer == "lars" and pod.train.lr == pytest.approx(1_000 * protocol.train.lr)
    steps_per_epoch = 6_650
    schedule = configuration.optimizer(pod, steps_per_epoch).lr
    peak = 1_000 * protocol.train.lr * (512 / 16) ** 0.5
    assert float(schedule(steps_per_epoch // 2)) == pytest.approx(
        peak / 2, rel=1e-3
    )  # halfway up the warm-up
    assert float(schedule(steps_per_epoch)) == pytest.approx(peak)  # sqrt-scaled after it
    assert float(schedule(pod.train.num_epochs * steps_per_epoch)) == pytest.approx(
        0.0, abs=1e-9
    )  # cosine to 0
    assert float(configuration.optimizer(protocol, steps_per_epoch).lr(0)) == protocol.train.lr
