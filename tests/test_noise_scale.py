"""The gradient noise scale: its estimators on a toy with a known answer, its smoothing and resume
state, and in training: bit-identical parameters with it on and off, and a run made before it was
measured resumes. (The series of a resumed run: tests/test_trainer.py; 8 devices: tests/multidevice.)"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import Interrupted, interrupt_after, latest_checkpoint

from bridgegap_jax.base import sharding
from bridgegap_jax.run import configuration, noise_scale, part_gradients, rundir, trainer


def test_the_estimate_recovers_the_noise_scale_of_a_least_squares_toy():
    """Per-example loss 0.5 |w - z_i|^2 with z_i ~ N(mu, diag(s^2)): the gradient w - z_i has mean
    G = w - mu and covariance diag(s^2), so B_simple = sum(s^2) / |w - mu|^2 exactly. The trainer's
    code (part_norms in 4 parts of a batch of 64, the unbiased estimators, the smoothing) over 30 log
    points recovers it within 10% (its spread over seeds: ~1.3%)."""
    rng = np.random.default_rng(0)
    dims, batch = 4096, 64
    s = rng.uniform(0.5, 1.5, dims)
    mu = rng.normal(size=dims)
    w = mu + rng.normal(size=dims) * np.sqrt(np.sum(s**2) / 64 / dims)  # B_simple near the batch
    analytic = np.sum(s**2) / np.sum((w - mu) ** 2)

    def objective(params, context, z):
        return jnp.mean(0.5 * jnp.sum(jnp.square(params - z), axis=1))

    norms = part_gradients.part_norms_fn(objective, sharding.make_mesh(jax.devices()[:1]), parts=4)
    smoothed = noise_scale.SmoothedNoiseScale()
    for _ in range(30):
        z = (mu + rng.normal(size=(batch, dims)) * s).astype(np.float32)
        values = jax.device_get(norms(jnp.asarray(w, jnp.float32), (), jnp.asarray(z)))
        smoothed.update(float(values["small_sq"]), float(values["big_sq"]), batch // 4, batch)
    print(f"toy: B_simple {smoothed.value():.2f}, analytic {analytic:.2f}")
    assert smoothed.value() == pytest.approx(analytic, rel=0.10)


def test_the_smoothed_scale_is_unknown_until_the_gradient_stands_out_and_resumes_from_its_state():
    smoothed = noise_scale.SmoothedNoiseScale()
    assert smoothed.value() is None and noise_scale.text(smoothed.value()) == "-"
    assert smoothed.update(small_sq=4.0, big_sq=1.0, small_batch=4, big_batch=16) == (
        0.0,
        16.0,
    )  # not known yet
    assert smoothed.value() is None
    smoothed.update(small_sq=float("nan"), big_sq=1.0, small_batch=4, big_batch=16)  # a non-finite step
    assert smoothed.points == 1
    smoothed.update(small_sq=2.0, big_sq=1.0, small_batch=4, big_batch=16)  # |G|^2 = 2/3, tr = 16/3
    decay = noise_scale.DECAY  # each average: decay * before + (1 - decay) * now; the (1 - decay) cancels
    assert smoothed.value() == pytest.approx((decay * 16 + 16 / 3) / (decay * 0 + 2 / 3))
    saved = json.loads(json.dumps(smoothed.state()))  # as a checkpoint's progress item keeps it
    assert noise_scale.SmoothedNoiseScale(saved).state() == smoothed.state()
    assert (
        noise_scale.SmoothedNoiseScale({"epoch": 3, "elapsed_s": 1.0}).value() is None
    )  # an older checkpoint
    assert [noise_scale.text(v) for v in (0.4567, 31.04, 310.4, 12345.6)] == ["0.457", "31", "310", "12346"]


def test_parts_that_do_not_divide_the_batch_are_refused_before_anything_is_written(tiny_config, tmp_path):
    tiny_config.train.noise_scale_parts = 3  # batch 64
    with pytest.raises(
        configuration.ConfigError,
        match=r"^config.train.noise_scale_parts=3: must divide train.batch_size=64 \(the noise scale measures",
    ):
        trainer.train_and_evaluate(tiny_config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_data_dir):
    """One tiny epoch (5 log points) with the noise scale on and off: {name: (result, workdir)}."""
    from helpers import tiny_demo

    done = {}
    for name, parts in (("on", 4), ("off", 0)):
        workdir = str(tmp_path_factory.mktemp(name))
        config = tiny_demo(demo_data_dir, train__num_epochs=1, train__noise_scale_parts=parts)
        done[name] = (trainer.train_and_evaluate(config, workdir), workdir)
    return done


def train_records(workdir) -> list[dict]:
    with open(os.path.join(workdir, rundir.METRICS_FILE)) as f:
        return [r for r in map(json.loads, f) if r["kind"] == "train"]


@pytest.mark.slow
def test_training_is_bit_identical_with_the_noise_scale_on_and_off(runs):
    (on, on_dir), (off, off_dir) = runs["on"], runs["off"]
    (_, a), (_, b) = latest_checkpoint(on_dir), latest_checkpoint(off_dir)
    for part in ("params", "batch_stats", "opt_state"):
        jax.tree.map(np.testing.assert_array_equal, a["train"][part], b["train"][part])
    assert on["test_map"] == off["test_map"] and on["test_loss"] == off["test_loss"]
    records = train_records(on_dir)
    logged = [r["noise_scale"] for r in records]
    assert len(logged) == 5 and all(value is None or value > 0 for value in logged) and logged[-1] is not None
    assert all(r["noise_trace"] > 0 and isinstance(r["noise_grad_sq"], float) for r in records)
    assert all("noise_scale" not in r for r in train_records(off_dir))


@pytest.mark.slow
def test_a_run_made_before_the_noise_scale_resumes(runs, tiny_config, tmp_path, monkeypatch, capsys):
    """Its checkpoints hold no noise-scale state and its config.json no noise_scale_parts: it resumes
    (the new field recorded as a change), trains on exactly as before, and measures from there."""
    tiny_config.train.num_epochs = 1
    workdir = str(tmp_path / "old")
    monkeypatch.setattr(part_gradients.Monitor, "state", lambda self: {})  # what older checkpoints hold
    interrupt_after(monkeypatch, 13)  # resumes from the checkpoint of step 10
    with pytest.raises(Interrupted):
        trainer.train_and_evaluate(tiny_config, workdir)
    monkeypatch.undo()
    config_file = os.path.join(workdir, rundir.CONFIG_FILE)
    with open(config_file) as f:
        stored = json.load(f)
    del stored["train"]["noise_scale_parts"]
    with open(config_file, "w") as f:
        json.dump(stored, f)
    capsys.readouterr()
    resumed = trainer.train_and_evaluate(tiny_config, workdir)
    assert "changed on resume: train.noise_scale_parts None -> 4" in capsys.readouterr().out

    (_, whole_dir) = runs["on"]
    (_, a), (_, b) = latest_checkpoint(whole_dir), latest_checkpoint(workdir)
    for part in ("params", "batch_stats", "opt_state"):
        jax.tree.map(np.testing.assert_array_equal, a["train"][part], b["train"][part])
    assert resumed["test_map"] == runs["on"][0]["test_map"]
    after = [r["noise_scale"] for r in train_records(workdir) if r["step"] > 10]
    assert len(after) == 3 and after[-1] is not None  # measured again from the resumed step
