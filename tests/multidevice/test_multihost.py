"""Two processes on localhost (jax.distributed, gloo CPU collectives), 4 virtual CPU devices each.

A 2 x 4-device run of the demo gets SIGTERM on one process (a preempted host): both stop at the same
step, save it and exit; restarted, the run ends bit for bit where an uninterrupted 2-process run
ends, and where an uninterrupted run of one process with 8 devices ends (the same global batch,
the same per-device programs): the same LL-Cp corrections, parameters up to the cross-process
summation order, and test mAP over every test example exactly once; logs and metric files come
from process 0 only. Its best model, evaluated on one process and one device, gives the same mAP
and count. The test itself runs in the 8-device child (tests/test_multidevice.py).

Why not compare with a 1-device run: Adam's step lr * m / (sqrt(v) + eps) turns the summation-order
noise of gradient elements near eps (directions BatchNorm makes flat) into +-lr steps, so runs on
different device counts drift apart within a few steps of the demo's lr 1e-3 (test_sharding.py
checks the single step).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np
from helpers import TINY_DEMO
from multihost_driver import SLOW_HOST_VAR, shorten

from bridgegap_jax.base import sharding
from bridgegap_jax.data import input_pipeline
from bridgegap_jax.run import configuration, evaluation, rundir, steps, trainer
from bridgegap_jax.run.checkpoint import RunCheckpoints

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DRIVER = os.path.join(HERE, "multihost_driver.py")
STEPS_PER_EPOCH = 6
OVERRIDES = {  # on top of configs/demo.py:tiny; the same for the 2-process and the 1-process run
    "train.batch_size": 16,
    "train.log_every_steps": 1000,
    "train.checkpoint_every_steps": 4,
    "loss.scheme": "LL-Cp",
    "loss.delta_rel": 0.02,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start_two_processes(workdir, data_dir, slow_host_s=0):
    """Start both processes of one run: (the processes, finish), finish() waiting for them: (return
    codes, outputs). `slow_host_s`: process 1 starts its run that much later (multihost_driver)."""
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=4",
        **({SLOW_HOST_VAR: str(slow_host_s)} if slow_host_s else {}),
    )  # the session's compilation cache (conftest): the restarted run reuses the first run's programs
    flags = [
        f"--config={TINY_DEMO}",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        *[f"--config.{key}={value}" for key, value in OVERRIDES.items()],
        "--distributed",
        f"--coordinator_address=localhost:{free_port()}",
        "--num_processes=2",
        "--workdir_is_shared",  # both processes are on this machine: the local workdir is shared
    ]
    logs = [os.path.join(workdir + f".process{i}.log") for i in range(2)]
    procs = []
    for i in range(2):
        with open(logs[i], "w") as out:  # files, not pipes: a full pipe would stall a collective
            command = [sys.executable, DRIVER, str(STEPS_PER_EPOCH), *flags, f"--process_id={i}"]
            procs.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT))

    def finish():
        try:
            codes = [p.wait(timeout=300) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        outputs = []
        for path in logs:
            with open(path) as f:
                outputs.append(f.read())
        return codes, outputs

    return procs, finish


def sigterm_after_checkpoint(workdir, step: int, process) -> threading.Thread:
    """SIGTERM `process` (one host of the run, as a preemption does) once checkpoint `step` is saved."""
    saved = os.path.join(workdir, "checkpoints", "latest", str(step))

    def watch():
        while not os.path.isdir(saved) and process.poll() is None:
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)

    thread = threading.Thread(target=watch)
    thread.start()
    return thread


def relative_error(a, b) -> float:
    """||a - b|| / ||a|| over all leaves of two trees together."""
    diff = sum(np.sum((np.float64(x) - y) ** 2) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    return float(np.sqrt(diff / sum(np.sum(np.float64(x) ** 2) for x in jax.tree.leaves(a))))


def latest_state(workdir, model, tx, mesh):
    """The train state and corrections of the latest checkpoint, restored onto `mesh`."""
    checkpoints = RunCheckpoints(rundir.RunDir(workdir).checkpoints)
    target = {
        "train": steps.abstract_state(model, tx, 32, mesh),
        "host": {"corrections": np.zeros((1600, 2), np.uint8)},
    }
    restored, _ = checkpoints.restore_latest(target)
    checkpoints.close()
    return jax.device_get(restored["train"]), np.asarray(restored["host"]["corrections"])


def test_two_processes_stop_together_at_sigterm_and_resume_to_the_uninterrupted_end(
    tiny_config, demo_data_dir, tmp_path, monkeypatch
):
    split, whole_2 = str(tmp_path / "split"), str(tmp_path / "whole_2")
    # SIGTERM to process 1 after the checkpoint of step 4 (epoch 1); meanwhile, the uninterrupted run of
    # one process with 8 devices (same global batch). (Never more than two processes of runs at once:
    # on 2 loaded cores, gloo's 30 s for the processes to meet runs out.)
    preempted, stopped = start_two_processes(split, demo_data_dir)
    signal_sent = sigterm_after_checkpoint(split, 4, preempted[1])
    for key, value in OVERRIDES.items():
        group, field = key.split(".")
        tiny_config[group][field] = value
    original = shorten(input_pipeline, STEPS_PER_EPOCH)
    try:
        whole = trainer.train_and_evaluate(tiny_config, str(tmp_path / "whole"))
    finally:
        input_pipeline.steps_per_epoch = original

    codes, outputs = stopped()
    signal_sent.join()
    step = RunCheckpoints(rundir.RunDir(split).checkpoints).latest_step()
    line = f"error: stopped by SIGTERM at step {step}; rerun the same command to resume {split} from its checkpoint"
    assert codes == [143, 143], outputs
    assert all(out.rstrip().endswith(f"{line} at step {step}") for out in outputs), outputs  # the same step
    assert 4 < step < 2 * STEPS_PER_EPOCH and not os.path.exists(os.path.join(split, rundir.LOCK_FILE))
    codes, outputs = start_two_processes(split, demo_data_dir)[1]()
    assert codes == [0, 0], outputs
    assert f"resuming {split} at step {step}" in outputs[0] and "on 8 device(s)" in outputs[0]
    assert "test mAP" in outputs[0] and "resuming" not in outputs[1] and "test mAP" not in outputs[1]
    # Uninterrupted, two processes, one of them a slow host: 40 s behind at the first collective (the
    # lock), more than the 30 s that gloo gives processes to meet there (main meets them before).
    codes, outputs = start_two_processes(whole_2, demo_data_dir, slow_host_s=40)[1]()
    assert codes == [0, 0], outputs

    with open(os.path.join(split, rundir.RESULT_FILE)) as f:
        result = json.load(f)
    with open(os.path.join(whole_2, rundir.RESULT_FILE)) as f:
        assert json.load(f)["test_map"] == result["test_map"]
    assert result["num_test_examples"] == whole["num_test_examples"] == 480  # 7.5 batches of 64
    assert result["best_epoch"] == whole["best_epoch"]
    # mAP of a model 12 steps from scratch is ill-conditioned (near-tied scores): within 0.1 points.
    np.testing.assert_allclose(result["test_map"], whole["test_map"], atol=0.1)
    model, tx = configuration.model(tiny_config, 10), configuration.optimizer(tiny_config).tx
    mesh_1 = sharding.make_mesh(jax.devices()[:1])  # restored onto 1 device: saved from 8
    state_a, corrections_a = latest_state(str(tmp_path / "whole"), model, tx, mesh_1)
    state_b, corrections_b = latest_state(split, model, tx, mesh_1)
    state_c, corrections_c = latest_state(whole_2, model, tx, mesh_1)
    assert int(state_b.step) == 2 * STEPS_PER_EPOCH
    jax.tree.map(np.testing.assert_array_equal, state_b, state_c)  # bit for bit: the same 2 processes
    np.testing.assert_array_equal(corrections_b, corrections_c)
    # ||a - b|| / ||a|| over all parameters: the reduction-order drift is ~2e-4 here; one step
    # more or less (each moves every element by ~lr = 1e-3, ~0.6% of its size) would be ~6e-3.
    assert relative_error(state_a.params, state_b.params) <= 1e-3
    assert np.bitwise_count(corrections_a).sum() > 0
    np.testing.assert_array_equal(corrections_a, corrections_b)
    with open(os.path.join(split, rundir.METRICS_FILE)) as f:
        kinds = [json.loads(line)["kind"] for line in f]
    assert kinds == [
        "train",
        "validation",
        "train",
        "validation",
        "test",
    ]  # one writer; the stop repeated nothing

    # The 2-process run's best model evaluated here on one process and one device: same mAP, count.
    checkpoints = RunCheckpoints(rundir.RunDir(split).checkpoints)
    best = checkpoints.restore_best(steps.abstract_state(model, tx, 32, mesh_1).model_vars())
    checkpoints.close()
    from bridgegap_jax.data import catalog

    dataset = catalog.open_dataset("demo", demo_data_dir)
    test = evaluation.evaluate_split(
        steps.jit_eval_step(model, mesh_1),
        best,
        dataset,
        "test",
        configuration.pipeline_options(tiny_config, 1),
        mesh_1,
    )
    assert test["num_examples"] == 480
    np.testing.assert_allclose(test["map"], result["test_map"], atol=0.1)
