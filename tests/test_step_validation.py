"""train.validate_every_steps: validations inside the epochs, recorded once each however often the run
stopped, and nothing else about the run changes (its steps, its best checkpoint, its test)."""

import json

import jax
import numpy as np
import pytest
from helpers import Interrupted, interrupt_after, latest_checkpoint

from bridgegap_jax.run import rundir, trainer


def records(workdir, kind):
    with open(workdir / rundir.METRICS_FILE) as f:
        return [r for r in map(json.loads, f) if r["kind"] == kind]


@pytest.mark.slow
def test_validations_within_epochs_are_recorded_once_and_change_nothing(tiny_config, tmp_path, monkeypatch):
    plain = trainer.train_and_evaluate(tiny_config, str(tmp_path / "plain"))
    tiny_config.train.validate_every_steps = 5  # 25 steps per epoch: the epochs' ends validate anyway
    interrupt_after(monkeypatch, 23)  # resumes from the checkpoint at step 20
    with pytest.raises(Interrupted):
        trainer.train_and_evaluate(tiny_config, str(tmp_path / "within"))
    monkeypatch.undo()
    within = trainer.train_and_evaluate(tiny_config, str(tmp_path / "within"))

    for key in ("test_map", "test_loss", "best_epoch", "best_val_map"):
        assert within[key] == plain[key], key
    (_, a), (_, b) = latest_checkpoint(str(tmp_path / "plain")), latest_checkpoint(str(tmp_path / "within"))
    for part in ("params", "batch_stats", "opt_state"):
        jax.tree.map(np.testing.assert_array_equal, a["train"][part], b["train"][part])
    steps = records(tmp_path / "within", "step_validation")
    assert [(r["step"], r["epoch"]) for r in steps] == [
        (s, 1 + s // 25) for s in (5, 10, 15, 20, 30, 35, 40, 45)
    ]
    assert all(0 < r["map"] <= 100 and r["loss"] > 0 for r in steps)
    assert len({r["map"] for r in steps}) > 1  # each measures the model of its step
    assert records(tmp_path / "within", "validation") == [
        {**r, "wall_time": w["wall_time"]}
        for r, w in zip(records(tmp_path / "plain", "validation"), records(tmp_path / "within", "validation"))
    ]
    assert records(tmp_path / "plain", "step_validation") == []
