import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from bridgegap_jax import input_pipeline, losses, sharding, train


def test_step_lowers_the_loss_and_new_epochs_do_not_recompile():
    config = __import__("configs.demo", fromlist=["get_config"]).get_config()
    config.model.width = 8
    mesh = sharding.make_mesh()
    model, tx = train.make_model(config, 10), train.make_optimizer(config)
    state = train.create_state(model, tx, 32, 0, mesh)
    step = train.jit_train_step(model, tx, "LL-R", 0, mesh)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (16, 32, 32, 3)), jnp.uint8)
    observed = np.zeros((16, 10), np.int8)
    observed[np.arange(16), rng.integers(0, 10, 16)] = 1
    observed = jnp.asarray(observed)
    first = None
    for epoch in range(1, 4):
        k = losses.num_large_losses("LL-R", epoch, 16, 10, 0.05)
        for _ in range(5):
            state, metrics, _ = step(state, images, observed, jnp.asarray(k, jnp.int32))
            first = float(metrics["loss"]) if first is None else first
    assert float(metrics["loss"]) < 0.5 * first
    assert step._cache_size() == 1  # one program for every epoch's k


class Interrupted(Exception):
    pass


def interrupt_after(monkeypatch, num_batches):
    """Make the training stream raise after `num_batches` batches, as a crash would."""
    original = input_pipeline.train_batches
    seen = {"n": 0}

    def stream(*args, **kwargs):
        for batch in original(*args, **kwargs):
            if seen["n"] == num_batches:
                raise Interrupted
            seen["n"] += 1
            yield batch

    monkeypatch.setattr(input_pipeline, "train_batches", stream)


def final_params(workdir):
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints", "latest"), item_names=("state", "progress"))
    restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return restored["state"]["train"]["params"], restored["state"].get("corrections")


def test_interrupted_and_resumed_run_equals_uninterrupted(tiny_config, tmp_path, monkeypatch, capsys):
    tiny_config.loss.scheme = "LL-Cp"
    tiny_config.loss.delta_rel = 0.02  # a few corrections per batch, so their state is exercised
    whole = train.train_and_evaluate(tiny_config, str(tmp_path / "whole"))

    interrupt_after(monkeypatch, 100 + 40)  # epoch 2, step 40; the latest checkpoint is at step 25
    with pytest.raises(Interrupted):
        train.train_and_evaluate(tiny_config, str(tmp_path / "split"))
    monkeypatch.undo()
    resumed = train.train_and_evaluate(tiny_config, str(tmp_path / "split"))
    assert "resuming" in capsys.readouterr().out

    assert resumed == whole
    params_a, corrections_a = final_params(str(tmp_path / "whole"))
    params_b, corrections_b = final_params(str(tmp_path / "split"))
    jax.tree.map(np.testing.assert_array_equal, params_a, params_b)
    assert np.bitwise_count(np.asarray(corrections_a)).sum() > 0
    np.testing.assert_array_equal(corrections_a, corrections_b)

    # A finished run is reported, not retrained.
    capsys.readouterr()
    again = train.train_and_evaluate(tiny_config, str(tmp_path / "whole"))
    assert again == whole and "already finished" in capsys.readouterr().out
    with open(tmp_path / "whole" / "metrics.jsonl") as f:
        kinds = [json.loads(line)["kind"] for line in f]
    assert kinds.count("validation") == 2 and kinds.count("test") == 1


def test_a_workdir_refuses_another_config(tiny_config, tmp_path):
    train.check_workdir_config(str(tmp_path), tiny_config)
    tiny_config.model.alpha = 1.0
    with pytest.raises(ValueError, match="model.alpha"):
        train.check_workdir_config(str(tmp_path), tiny_config)


def test_a_relative_workdir_works(tiny_config, tmp_path, monkeypatch):
    # The README's command uses --workdir=runs/demo; orbax wants absolute paths.
    monkeypatch.chdir(tmp_path)
    tiny_config.train.num_epochs = 1
    result = train.train_and_evaluate(tiny_config, "runs/relative")
    assert (tmp_path / "runs" / "relative" / train.RESULT_FILE).exists() and result["best_epoch"] == 1
