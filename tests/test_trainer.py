"""The training loop: one compiled step for every epoch, exact resume, the workdir's config rule."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from helpers import Interrupted, interrupt_after

from bridgegap_jax import configuration, rundir, schemes, sharding, steps, trainer


def test_step_lowers_the_loss_and_new_epochs_do_not_recompile():
    config = __import__("configs.demo", fromlist=["get_config"]).get_config()
    config.model.width = 8
    mesh = sharding.make_mesh()
    model, tx = configuration.model(config, 10), configuration.optimizer(config)
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


def final_state(workdir):
    manager = ocp.CheckpointManager(
        os.path.join(workdir, "checkpoints", "latest"), item_names=("state", "progress")
    )
    restored = manager.restore(
        manager.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore())
    )
    return restored["state"]["train"]["params"], restored["state"]["host"].get("corrections")


def test_interrupted_and_resumed_run_equals_uninterrupted(tiny_config, tmp_path, monkeypatch, capsys):
    tiny_config.loss.scheme = "LL-Cp"
    tiny_config.loss.delta_rel = 0.02  # a few corrections per batch, so their state is exercised
    whole = trainer.train_and_evaluate(tiny_config, str(tmp_path / "whole"))

    interrupt_after(monkeypatch, 25 + 15)  # epoch 2, step 15; the latest checkpoint is at step 35
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
    params_a, corrections_a = final_state(str(tmp_path / "whole"))
    params_b, corrections_b = final_state(str(tmp_path / "split"))
    jax.tree.map(np.testing.assert_array_equal, params_a, params_b)
    assert np.bitwise_count(np.asarray(corrections_a)).sum() > 0
    np.testing.assert_array_equal(corrections_a, corrections_b)

    # A finished run is reported, not retrained.
    capsys.readouterr()
    again = trainer.train_and_evaluate(tiny_config, str(tmp_path / "whole"))
    assert again == whole and "already finished" in capsys.readouterr().out
    for workdir in ("whole", "split"):  # one record per step and epoch, however often the run stopped
        with open(tmp_path / workdir / rundir.METRICS_FILE) as f:
            records = [json.loads(line) for line in f]
        kinds = [r["kind"] for r in records]
        assert kinds.count("validation") == 2 and kinds.count("test") == 1
        train_steps = [r["step"] for r in records if r["kind"] == "train"]
        assert train_steps == sorted(set(train_steps))


def test_a_workdir_refuses_another_config(tiny_config, tmp_path):
    run_dir = rundir.RunDir(str(tmp_path))
    run_dir.store_config(json.loads(tiny_config.to_json_best_effort()))
    tiny_config.model.alpha = 1.0
    changed = json.loads(tiny_config.to_json_best_effort())
    run_dir.check_config(changed)  # nothing trained yet: the config may still change
    (tmp_path / "checkpoints" / "latest" / "25").mkdir(parents=True)  # a checkpoint of the stored config
    with pytest.raises(rundir.RunDirError, match="unfinished run made with another config.*model.alpha"):
        run_dir.check_config(changed)


def test_a_relative_workdir_works(tiny_config, tmp_path, monkeypatch):
    # The README's command uses --workdir=runs/demo; orbax wants absolute paths.
    monkeypatch.chdir(tmp_path)
    tiny_config.train.num_epochs = 1
    result = trainer.train_and_evaluate(tiny_config, "runs/relative")
    assert (tmp_path / "runs" / "relative" / rundir.RESULT_FILE).exists() and result["best_epoch"] == 1
