"""The training loop: one compiled step for every epoch, exact resume, the workdir's config rule."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import Interrupted, interrupt_after, latest_checkpoint

from bridgegap_jax.base import sharding
from bridgegap_jax.run import configuration, rundir, schemes, steps, trainer


@pytest.mark.slow
def test_step_lowers_the_loss_and_new_epochs_do_not_recompile():
    config = __import__("configs.demo", fromlist=["get_config"]).get_config("tiny")
    mesh = sharding.make_mesh()
    model, tx = configuration.model(config, 10), configuration.optimizer(config).tx
    state = steps.create_state(model, tx, 32, 0, mesh)
    scheme = schemes.create("LL-R", 0.05)
    step = steps.jit_train_step(model, tx, scheme.loss, mesh)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (16, 32, 32, 3)), jnp.uint8)
    observed = np.zeros((16, 10), np.int8)
    observed[np.arange(16), rng.integers(0, 10, 16)] = 1
    observed = jnp.asarray(observed)
    first = None
    for epoch in range(1, 4):
        k = scheme.num_large_losses(epoch, 16, 10)
        for _ in range(5):
            state, metrics, _ = step(state, images, observed, jnp.asarray(k, jnp.int32))
            first = float(metrics["loss"]) if first is None else first
    assert float(metrics["loss"]) < 0.5 * first
    assert step._cache_size() == 1  # one program for every epoch's k


@pytest.mark.slow
def test_interrupted_and_resumed_run_equals_uninterrupted(tiny_config, tmp_path, monkeypatch, capsys):
    """LL-Cp with the large-batch options on (their state must resume too): sqrt lr scaling, a warm-up
    the interruption falls in, cosine decay, ghost BatchNorm and grouped selection at batch 64."""
    c = tiny_config
    c.loss.scheme, c.loss.group_size, c.model.bn_group_size = "LL-Cp", 16, 16
    c.loss.delta_rel = 0.02  # a few corrections per batch, so their state is exercised
    c.train.lr_scaling, c.train.warmup_epochs, c.train.lr_decay = "sqrt", 1.6, "cosine"  # warm-up: 40 steps
    whole = trainer.train_and_evaluate(tiny_config, str(tmp_path / "whole"))

    # Stopped twice: at epoch 1 step 13 (resumes from step 10), then at epoch 2 step 15 (step 40, in
    # the warm-up; resumes from step 35).
    for stop_after in (13, 30):
        interrupt_after(monkeypatch, stop_after)
        with pytest.raises(Interrupted):
            trainer.train_and_evaluate(tiny_config, str(tmp_path / "split"))
        monkeypatch.undo()
    resumed = trainer.train_and_evaluate(tiny_config, str(tmp_path / "split"))
    assert "resuming" in capsys.readouterr().out

    for key in (
        "test_map",
        "test_map_with_positives",
        "test_loss",
        "best_epoch",
        "best_val_map",
        "num_test_examples",
    ):
        assert resumed[key] == whole[key], key
    (_, a), (_, b) = latest_checkpoint(str(tmp_path / "whole")), latest_checkpoint(str(tmp_path / "split"))
    for part in ("params", "batch_stats", "opt_state"):  # the optimizer state holds the schedule's step
        jax.tree.map(np.testing.assert_array_equal, a["train"][part], b["train"][part])
    assert np.bitwise_count(np.asarray(a["host"]["corrections"])).sum() > 0
    np.testing.assert_array_equal(a["host"]["corrections"], b["host"]["corrections"])

    # A finished run is reported, not retrained.
    capsys.readouterr()
    again = trainer.train_and_evaluate(tiny_config, str(tmp_path / "whole"))
    assert again == whole and "already finished" in capsys.readouterr().out
    logged = {}
    for workdir in ("whole", "split"):  # one record per step and epoch, however often the run stopped
        with open(tmp_path / workdir / rundir.METRICS_FILE) as f:
            records = [json.loads(line) for line in f]
        assert [r["epoch"] for r in records if r["kind"] == "validation"] == [1, 2]
        assert sum(r["kind"] == "test" for r in records) == 1
        assert [r["step"] for r in records if r["kind"] == "train"] == list(range(5, 51, 5))
        logged[workdir] = [
            (r["loss"], r["grad_norm"], r["lr"], r["noise_scale"]) for r in records if r["kind"] == "train"
        ]
    assert logged["split"] == logged["whole"]  # the logged loss, gradient norm and noise scale, bit for bit
    assert all(grad_norm > 0 for _, grad_norm, _, _ in logged["whole"])
    assert logged["whole"][-1][3] is not None  # the noise scale's averages resumed with the run


@pytest.mark.parametrize("optimizer,lr", [("lamb", 1e-2), ("lars", 0.1)])
@pytest.mark.slow
def test_each_layer_wise_optimizer_resumes_bit_identically(tiny_config, tmp_path, monkeypatch, optimizer, lr):
    """Its state (moments or momentum, and the schedule's step) continues exactly: one epoch with a
    warm-up and cosine decay, stopped at step 13 (resumes from 10). Adam: the test above."""
    c = tiny_config
    c.train.optimizer, c.train.lr, c.train.num_epochs = optimizer, lr, 1
    c.train.warmup_epochs, c.train.lr_decay = 0.6, "cosine"
    whole = trainer.train_and_evaluate(c, str(tmp_path / "whole"))
    interrupt_after(monkeypatch, 13)
    with pytest.raises(Interrupted):
        trainer.train_and_evaluate(c, str(tmp_path / "split"))
    monkeypatch.undo()
    resumed = trainer.train_and_evaluate(c, str(tmp_path / "split"))
    assert resumed["test_map"] == whole["test_map"] and resumed["test_loss"] == whole["test_loss"]
    (_, a), (_, b) = latest_checkpoint(str(tmp_path / "whole")), latest_checkpoint(str(tmp_path / "split"))
    for part in ("params", "batch_stats", "opt_state"):
        jax.tree.map(np.testing.assert_array_equal, a["train"][part], b["train"][part])
    assert a["train"]["skipped_steps"] == 0


def test_a_workdir_refuses_another_config(tiny_config, tmp_path):
    run_dir = rundir.RunDir(str(tmp_path))
    run_dir.store_config(json.loads(tiny_config.to_json_best_effort()))
    tiny_config.model.alpha = 1.0
    changed = json.loads(tiny_config.to_json_best_effort())
    changeable = configuration.CHANGEABLE_ON_RESUME
    assert run_dir.check_config(changed, changeable) == {}  # nothing trained yet: the config may still change
    (tmp_path / "checkpoints" / "latest" / "25").mkdir(parents=True)  # a checkpoint of the stored config
    with pytest.raises(
        rundir.RunDirError,
        match=r"holds an unfinished run made with another config \(differing: model.alpha\)",
    ):
        run_dir.check_config(changed, changeable)
    tiny_config.model.alpha, tiny_config.data.workers = 5.0, 2  # only what happens from now on
    assert run_dir.check_config(json.loads(tiny_config.to_json_best_effort()), changeable) == {
        "data.workers": [0, 2]
    }


@pytest.mark.slow
def test_a_relative_workdir_works(tiny_config, tmp_path, monkeypatch):
    # The README's command uses --workdir=runs/demo; orbax wants absolute paths.
    monkeypatch.chdir(tmp_path)
    tiny_config.train.num_epochs = 1
    result = trainer.train_and_evaluate(tiny_config, "runs/relative")
    assert (tmp_path / "runs" / "relative" / rundir.RESULT_FILE).exists() and result["best_epoch"] == 1
