"""LL-Cp's correction bitmap is dataset state: it must survive a checkpoint round trip bit for bit."""

import jax
import jax.numpy as jnp
import numpy as np

from bridgegap_jax.run.checkpoint import RunCheckpoints
from bridgegap_jax.run.schemes.permanent_correction import LabelCorrections


def test_corrections_survive_checkpoint_round_trip(tmp_path):
    num_examples, num_classes = 37, 13  # a class count that is not a multiple of 8
    corrections = LabelCorrections(num_examples, num_classes)
    rng = np.random.default_rng(0)
    for _ in range(3):
        index = np.append(rng.choice(num_examples, 6, replace=False), -1)  # -1: a padded row
        corrections.add(index, rng.random((7, num_classes)) < 0.3)
    train = {"params": {"w": jnp.arange(6.0).reshape(2, 3)}, "step": jnp.asarray(4, jnp.int32)}
    progress = {"epoch": 2, "step_in_epoch": 5}

    checkpoints = RunCheckpoints(str(tmp_path / "checkpoints"))
    checkpoints.save_latest(4, {"train": train, "corrections": corrections.bits}, progress)
    checkpoints.close()

    checkpoints = RunCheckpoints(str(tmp_path / "checkpoints"))
    target = {
        "train": jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), train),
        "corrections": LabelCorrections(num_examples, num_classes).bits,
    }
    restored, restored_progress = checkpoints.restore_latest(target)
    checkpoints.close()

    again = LabelCorrections(num_examples, num_classes, np.asarray(restored["corrections"]))
    np.testing.assert_array_equal(again.bits, corrections.bits)
    assert again.count() == corrections.count() > 0
    observed = np.zeros((num_examples, num_classes), np.int8)
    np.testing.assert_array_equal(
        again.apply(np.arange(num_examples), observed), corrections.apply(np.arange(num_examples), observed)
    )
    np.testing.assert_array_equal(restored["train"]["params"]["w"], train["params"]["w"])
    assert restored_progress == progress
