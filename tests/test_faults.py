"""Faults and bad input: every failure a user can meet is a clear refusal or a clean recovery.

Each test reproduces one way a run went wrong before (a changed config on a finished workdir,
corrupt JPEGs, divergence and its remedy, two runs on one workdir, damaged locks, bad config values,
Ctrl-C, a full disk, unwritable or damaged workdirs, a damaged shard, broken weight files, SIGTERM,
a crash during a checkpoint save, damaged checkpoints) and checks what happens now.
"""

import errno
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    ROOT,
    TINY_DEMO,
    demo_flags,
    latest_checkpoint,
    one_line_error,
    override,
    run,
    tiny_demo,
)

from bridgegap_jax import report
from bridgegap_jax.data import catalog, images, input_pipeline
from bridgegap_jax.prepare import cli, fake, writer
from bridgegap_jax.run import checkpoint, configuration, losses, rundir, schemes, stopping, trainer
from bridgegap_jax.run.run_log import RunLog


@pytest.fixture(scope="module")
def finished(demo_data_dir, tmp_path_factory):
    """A finished tiny demo run: (workdir, config)."""
    config = tiny_demo(demo_data_dir, train__num_epochs=1)
    workdir = str(tmp_path_factory.mktemp("finished") / "run")
    trainer.train_and_evaluate(config, workdir)
    return workdir, config


@pytest.fixture(scope="module")
def uninterrupted(demo_data_dir, tmp_path_factory):
    """The tiny demo run (helpers.TINY_DEMO, 2 epochs) never interrupted: (workdir, result)."""
    config = tiny_demo(demo_data_dir)
    workdir = str(tmp_path_factory.mktemp("uninterrupted") / "run")
    return workdir, trainer.train_and_evaluate(config, workdir)


def assert_ends_as(workdir, uninterrupted):
    """`workdir` finished with the uninterrupted run's result and, bit for bit, its parameters."""
    result = json.loads(open(os.path.join(workdir, rundir.RESULT_FILE)).read())
    for key in ("test_map", "best_epoch", "best_val_map"):
        assert result[key] == uninterrupted[1][key], key
    step_a, params_a = latest_params(uninterrupted[0])
    step_b, params_b = latest_params(workdir)
    assert step_a == step_b == 50
    jax.tree.map(np.testing.assert_array_equal, params_a, params_b)


def latest_params(workdir):
    step, state = latest_checkpoint(workdir)
    return step, state["train"]["params"]


# --- 1. a finished workdir and a changed config -----------------------------------------------
@pytest.mark.slow
def test_a_finished_workdir_refuses_a_changed_config(finished, demo_data_dir):
    workdir, config = finished
    config = config.copy_and_resolve_references()
    config.model.alpha = 1.0
    with pytest.raises(
        rundir.RunDirError, match="holds a finished run made with another config.*model.alpha"
    ):
        trainer.train_and_evaluate(config, workdir)
    message = one_line_error(
        run(
            "-m",
            "bridgegap_jax.main",
            *demo_flags(workdir, demo_data_dir, train__num_epochs=1),
            "--config.model.alpha=1",
        )
    )
    assert "finished run made with another config (differing: model.alpha)" in message


# --- 2. corrupt JPEGs that one decoder accepts and another rejects ---------------------------
def mutations(data: bytes, rng, count: int):
    """`count` damaged copies of a JPEG: FF F8 inserted in the entropy-coded data, truncations,
    flipped bytes in the scan and in the headers."""
    scan = data.find(b"\xff\xda") + 20
    for i in range(count):
        kind = i % 4
        if kind == 0:
            position = int(rng.integers(scan, len(data) - 4))
            yield data[:position] + b"\xff\xf8" + data[position:]
        elif kind == 1:
            yield data[: int(rng.integers(scan, len(data) - 2))]
        else:
            lo, hi = (scan, len(data) - 2) if kind == 2 else (2, scan)
            damaged = bytearray(data)
            for position in rng.integers(lo, hi, 3):
                damaged[position] ^= int(rng.integers(1, 256))
            yield bytes(damaged)


def test_fuzzed_jpegs_never_reach_training(tmp_path):
    rng = np.random.default_rng(0)
    made = fake.make_voc(str(tmp_path / "download"), rng, sizes=(90, 14))
    root = made["image_root"]
    names = sorted(name for name in os.listdir(root) if name not in made["missing"] + made["corrupt"])
    damaged = names[:60]
    for name, data in zip(
        damaged, mutations(open(os.path.join(root, damaged[0]), "rb").read(), rng, len(damaged))
    ):
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)
    assert (
        cli.main(
            ["voc", f"--source={tmp_path / 'download'}", f"--data_dir={tmp_path / 'data'}", "--workers=2"]
        )
        == 0
    )
    dataset = catalog.open_dataset("voc", str(tmp_path / "data"))
    dropped = {
        row[0]
        for split in catalog.SPLITS
        for row in writer.read_manifest(os.path.join(dataset.directory, f"missing_{split}.tsv"))
    }
    assert len(dropped & set(damaged)) >= 30  # most mutations break a decoder; those never enter the dataset
    for split in catalog.SPLITS:  # whatever was kept decodes with every decoder that training may use
        source = dataset.source(split)
        for record in source.__getitems__(list(range(len(source)))):
            for method in images.RESIZE_METHODS:
                images.decode_and_resize(record["image"], 32, method)


# --- 3. divergence ------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_non_finite_step_stops_the_run_and_never_reaches_a_checkpoint(tiny_config, tmp_path):
    override(tiny_config, train__lr=1e20, train__checkpoint_every_steps=1)
    workdir = str(tmp_path / "run")
    with pytest.raises(
        trainer.NonFiniteError,
        match=r"non-finite at step 2 \(epoch 1, lr 1e\+20\).*checkpoint "
        r"\(step 1\) holds the last finite state",
    ):
        trainer.train_and_evaluate(tiny_config, workdir)
    step, params = latest_params(workdir)
    assert step == 1 and all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(params))
    assert not os.path.exists(os.path.join(workdir, rundir.LOCK_FILE))  # released on the way out
    # The README's remedy is accepted; at this lr every step after the first is non-finite (parameters
    # of ~1e20), so the epoch ends with the non-finite line.
    tiny_config.train.nonfinite, tiny_config.train.checkpoint_every_steps = "skip", 10
    with pytest.raises(trainer.NonFiniteError, match="all 24 training steps of epoch 1 were skipped"):
        trainer.train_and_evaluate(tiny_config, workdir)
    # Back to 'stop' with skipped steps in the checkpoint (step 20): 'stop' would take them for new ones.
    tiny_config.train.nonfinite = "stop"
    with pytest.raises(configuration.ConfigError, match="step 20 holds 19 step.s. skipped as non-finite"):
        trainer.train_and_evaluate(tiny_config, workdir)


@pytest.mark.slow
def test_a_model_diverged_under_skip_ends_with_the_non_finite_line(tiny_config, tmp_path):
    """Not a traceback of NaN scores: the first step makes the parameters ~1e20, the rest are skipped."""
    override(tiny_config, train__lr=1e20, train__nonfinite="skip", train__num_epochs=1)
    with pytest.raises(
        trainer.NonFiniteError,
        match=r"the validation scores are not finite at epoch 1: .*24 non-finite step\(s\) skipped",
    ):
        trainer.train_and_evaluate(tiny_config, str(tmp_path / "run"))


class NaNEveryThirdBatch(schemes.Scheme):
    """AN, except that a third of the batches (by their first label) give a NaN loss."""

    name = "test-nan"

    def loss(self, logits, observed, k):
        out = schemes.create("AN").loss(logits, observed, k)
        bad = jnp.argmax(observed[0]) % 3 == 0
        return losses.LossOutput(jnp.where(bad, jnp.nan, out.loss), out.selected)


@pytest.mark.slow
def test_the_skip_policy_drops_non_finite_steps(tiny_config, tmp_path):
    """(NaNEveryThirdBatch is registered from outside the package, as a user's own scheme would be.)"""
    schemes.register(NaNEveryThirdBatch)
    try:
        override(tiny_config, loss__scheme="test-nan", train__nonfinite="skip", train__num_epochs=1)
        result = trainer.train_and_evaluate(tiny_config, str(tmp_path / "run"))
    finally:
        del schemes.REGISTRY["test-nan"]
    with open(tmp_path / "run" / rundir.METRICS_FILE) as f:
        records = [json.loads(line) for line in f]
    skipped = [r["skipped_steps"] for r in records if r["kind"] == "train"]
    assert 0 < skipped[-1] < 25 and skipped == sorted(skipped)  # counted as they happen
    assert np.isfinite(result["test_map"])


@pytest.mark.slow
def test_the_readme_remedy_for_divergence_resumes_with_skip(tiny_config, tmp_path):
    """Stopped at the first non-finite step, the same workdir resumes with --config.train.nonfinite=skip
    (docs/troubleshooting.md), and the change is recorded."""
    schemes.register(NaNEveryThirdBatch)
    workdir = str(tmp_path / "run")
    try:
        override(tiny_config, loss__scheme="test-nan", train__num_epochs=1, train__checkpoint_every_steps=1)
        with pytest.raises(trainer.NonFiniteError, match="stopped without saving; the latest checkpoint"):
            trainer.train_and_evaluate(tiny_config, workdir)
        step, _ = latest_params(workdir)
        tiny_config.train.nonfinite, tiny_config.train.checkpoint_every_steps = (
            "skip",
            100,
        )  # fewer saves, too
        result = trainer.train_and_evaluate(tiny_config, workdir)
    finally:
        del schemes.REGISTRY["test-nan"]
    assert np.isfinite(result["test_map"])
    with open(os.path.join(workdir, rundir.METRICS_FILE)) as f:
        changes = [json.loads(line) for line in f if '"kind": "config"' in line]
    assert [(r["step"], r["changed"]) for r in changes] == [
        (step, {"train.checkpoint_every_steps": [1, 100], "train.nonfinite": ["stop", "skip"]})
    ]
    assert json.loads(open(os.path.join(workdir, rundir.CONFIG_FILE)).read())["train"]["nonfinite"] == "skip"


# --- 4. two runs on one workdir -----------------------------------------------------------------
def child_pids(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    children = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except FileNotFoundError:  # exited meanwhile
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:  # the field after the state
            children.append(int(entry))
    return children


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_a_second_run_on_a_busy_workdir_refuses(demo_data_dir, tmp_path):
    """... and when the first is killed (kill -9), its decoding workers exit too."""
    workdir = str(tmp_path / "run")
    flags = demo_flags(workdir, demo_data_dir, train__num_epochs=20, data__workers=2)
    first = subprocess.Popen(
        [sys.executable, "-m", "bridgegap_jax.main", *flags],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in first.stdout:  # the first one trains
            if line.startswith("epoch 1/20 step 5/25"):
                break
        message = one_line_error(run("-m", "bridgegap_jax.main", *flags))
        assert f"is in use by pid {first.pid} on " in message and " since " in message
        workers = child_pids(first.pid)
        assert len(workers) >= 2, workers  # grain's workers (and its resource tracker)
    finally:
        first.kill()
        first.wait()
    deadline = time.monotonic() + 20
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(alive(pid) for pid in workers), "workers outlived the killed run"


@pytest.mark.slow
def test_a_lock_left_by_a_killed_process_is_taken_over(tiny_config, tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    lock = rundir.RunDir(str(workdir)).lock()
    (workdir / rundir.LOCK_FILE).write_text(json.dumps({**lock.me, "pid": int(dead.stdout)}))
    tiny_config.train.num_epochs = 1
    assert trainer.train_and_evaluate(tiny_config, str(workdir))["best_epoch"] == 1
    (workdir / rundir.RESULT_FILE).unlink()
    (workdir / rundir.LOCK_FILE).write_text(json.dumps(lock.me))  # this very process: alive
    with pytest.raises(rundir.RunDirError, match=f"in use by pid {os.getpid()}"):
        trainer.train_and_evaluate(tiny_config, str(workdir))


@pytest.mark.parametrize(
    "record",
    [
        "",  # created, then the disk was full (or the machine went down) before a byte was written
        '{"host": "vm", "pid": 12',  # cut short
        "[1, 2]",  # not ours
        '{"pid": -1, "heartbeat": "2020-01-01T00:00:00"}',  # no host, a time without a zone
    ],
)
def test_a_lock_that_does_not_read_or_names_no_live_process_is_taken_over(tmp_path, record):
    (tmp_path / rundir.LOCK_FILE).write_text(record)
    lock = rundir.RunDir(str(tmp_path)).lock()
    lock.acquire()
    assert json.loads((tmp_path / rundir.LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / rundir.LOCK_FILE).exists()


@pytest.fixture
def live_pid():
    """The pid of a live process that is not this one."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield sleeper.pid
    sleeper.kill()
    sleeper.wait()


@pytest.mark.parametrize(
    "case,took_over",
    [
        ("pid reused", "pid {pid} is now another process, started after it"),
        ("pid 1 in a restarted container", "pid 1 is now another process, started after it"),
        ("host restarted", "this host was restarted since"),
        ("this process, in an older record", "pid {pid} is this process (a container or VM restarted)"),
        ("alive, the same process", None),
        ("alive, in an older record", None),
    ],
)
def test_a_lock_of_this_host_is_taken_over_only_from_a_process_that_is_gone(
    tmp_path, live_pid, case, took_over
):
    """A container or VM restarted after a crash keeps its host name, and its entrypoint often gets the
    pid of the one before, 1 in a container: a live pid holds the lock only if it is the process that
    wrote it (the same start time and boot). (Before: every one of these was refused, for good.)"""
    lock = rundir.RunDir(str(tmp_path)).lock()
    pid = {"pid 1 in a restarted container": 1, "this process, in an older record": os.getpid()}.get(
        case, live_pid
    )
    with open(f"/proc/{pid}/stat") as f:  # its start time, in clock ticks since boot (field 22)
        started = int(f.read().rsplit(")", 1)[1].split()[19])
    record = {**lock.me, "pid": pid, "started": started}
    if case in ("pid reused", "pid 1 in a restarted container"):
        record["started"] -= 1  # the process that wrote it started before this one with its pid
    elif case == "host restarted":
        record["boot_id"] = "a boot before this one"
    elif case in ("this process, in an older record", "alive, in an older record"):
        record = {key: record[key] for key in ("host", "pid", "since")}
    (tmp_path / rundir.LOCK_FILE).write_text(json.dumps(record))
    if took_over is None:
        with pytest.raises(rundir.RunDirError, match=f"in use by pid {pid} on {lock.me['host']}"):
            lock.acquire()
        return
    assert lock.acquire() == (
        f"took over {tmp_path / rundir.LOCK_FILE} of pid {pid} on {lock.me['host']} since {lock.me['since']}: "
        + took_over.format(pid=pid)
    )
    held = json.loads((tmp_path / rundir.LOCK_FILE).read_text())
    assert {key: held[key] for key in lock.me} == lock.me  # this process's, with its start time and boot
    lock.release()
    assert not (tmp_path / rundir.LOCK_FILE).exists()


def test_a_lock_cut_short_by_a_full_disk_is_not_left_behind(tmp_path, monkeypatch):
    def full_disk(fd, mode):
        os.close(fd)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdopen", full_disk)
    with pytest.raises(OSError, match="No space left"):
        rundir.RunDir(str(tmp_path)).lock().acquire()
    assert not (tmp_path / rundir.LOCK_FILE).exists()


# --- 5, 6. config values that cannot run ---------------------------------------------------------
@pytest.mark.parametrize(
    "field,value",
    [
        ("train.num_epochs", 0),
        ("model.depth", 7),
        ("data.image_size", 0),
        ("data.observation", "bogus"),
        ("train.log_every_steps", 0),
        ("train.checkpoint_every_steps", 0),
        ("train.eval_batch_size", 0),
        ("train.lr", 0.0),
        ("train.lr", -1.0),
        ("model.alpha", 0.0),
        ("model.alpha", -1.0),
        ("train.batch_size", 5000),
        ("train.batch_size", 0),
        ("loss.delta_rel", 1.5),
        ("data.resize", "area"),
        ("train.nonfinite", "ignore"),
        ("data.workers", -1),
        ("data.image_size", 100000),  # accepted, it failed at once: "Unable to allocate 1.75 TiB"
        ("train.head_lr_mult", 0.0),
    ],
)
def test_a_config_that_cannot_run_is_refused_before_anything_is_written(tiny_config, tmp_path, field, value):
    section, name = field.split(".")
    tiny_config[section][name] = value
    with pytest.raises(configuration.ConfigError, match=f"config.{field}="):
        trainer.train_and_evaluate(tiny_config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_refused_config_is_one_line_from_the_command(demo_data_dir, tmp_path):
    message = one_line_error(
        run(
            "-m",
            "bridgegap_jax.main",
            *demo_flags(tmp_path / "run", demo_data_dir),
            "--config.train.batch_size=5000",
        )
    )
    assert message == (
        "error: config.train.batch_size=5000: is larger than the 1600 training examples of demo"
    )
    assert not (tmp_path / "run").exists()


def test_sizes_that_do_not_fit_the_host_name_what_they_need(tiny_config, tmp_path, monkeypatch):
    """Sizes a user can get wrong by a few zeros, tried at values that would be harmless if accepted."""
    monkeypatch.setattr(configuration, "host_memory", lambda: 2**19)  # this host: 512 KiB
    with pytest.raises(
        configuration.ConfigError,
        match=r"config.train.batch_size=64: would need 576.0 KiB of host memory, more than the 512.0 KiB here: "
        r"the input pipeline holds 3 batches of this process's 64 images of 32x32 \(uint8\)",
    ):
        trainer.train_and_evaluate(tiny_config, str(tmp_path / "run"))
    monkeypatch.undo()
    tiny_config.data.workers = configuration.WORKERS_PER_CORE * input_pipeline.default_workers() + 1
    with pytest.raises(configuration.ConfigError, match="data.workers=.*must be at most 4 per CPU core"):
        trainer.train_and_evaluate(tiny_config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


# --- 7. tracebacks that are now one line (Ctrl-C: tests/test_console.py) ----------------------
@pytest.mark.slow
def test_a_full_disk_is_one_line(demo_data_dir, tmp_path):
    """Only our line: what orbax logs and its threads print as the save fails is dropped."""
    done = run(
        os.path.join("tests", "fault_driver.py"),
        "disk-full",
        "20",
        *demo_flags(tmp_path / "run", demo_data_dir),
    )
    message = one_line_error(done)
    assert "no space left on the device holding" in message and "from its checkpoint at step 10" in message


@pytest.fixture
def file_in_the_way(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return path


@pytest.mark.parametrize(
    "case",
    ["workdir is a file", "workdir under a file", "read-only file system", "demo data dir under a file"],
)
@pytest.mark.slow
def test_a_workdir_or_data_dir_that_cannot_be_written_is_one_line(demo_data_dir, file_in_the_way, case):
    data_dir = file_in_the_way / "data" if case == "demo data dir under a file" else demo_data_dir
    workdir = file_in_the_way if case == "workdir is a file" else file_in_the_way.parent / "run"
    if case == "workdir under a file":
        workdir = file_in_the_way / "run"
    flags = demo_flags(workdir, data_dir)
    driver = [os.path.join("tests", "fault_driver.py"), "read-only", "0"]
    message = one_line_error(
        run(*(driver if case == "read-only file system" else ["-m", "bridgegap_jax.main"]), *flags)
    )
    expected = {
        "workdir is a file": f"--workdir={workdir} is a file, not a folder: choose another --workdir",
        "workdir under a file": f"cannot write in --workdir={workdir} (Not a directory: {workdir}); choose a",
        "read-only file system": f"cannot write in --workdir={workdir} (Read-only file system: {workdir});",
        "demo data dir under a file": f"cannot build the demo dataset in config.data.data_dir='{data_dir}' (Not a",
    }[case]
    assert expected in message
    assert file_in_the_way.read_text() == "not a folder" and not (file_in_the_way.parent / "run").exists()


@pytest.mark.parametrize("name", [rundir.CONFIG_FILE, rundir.RESULT_FILE])
@pytest.mark.slow
def test_a_damaged_config_or_result_file_is_one_line_naming_it(finished, demo_data_dir, tmp_path, name):
    workdir = shutil.copytree(finished[0], tmp_path / "run")
    (workdir / name).write_text('{"seed": ')  # cut short
    message = one_line_error(
        run("-m", "bridgegap_jax.main", *demo_flags(workdir, demo_data_dir, train__num_epochs=1))
    )
    what_to_do = {
        rundir.CONFIG_FILE: "delete it to go on with the config of your command (only if it is that one)",
        rundir.RESULT_FILE: "delete it, and the command that trained this run tests its best checkpoint again",
    }[name]
    assert (
        message.startswith(f"error: {workdir / name} is damaged (Expecting value") and what_to_do in message
    )
    assert report.main([str(workdir)]) == (2 if name == rundir.CONFIG_FILE else 0)  # it names it too


@pytest.mark.slow
def test_a_damaged_best_checkpoint_stops_a_resumed_run_at_its_start(finished, tmp_path):
    workdir, config = finished
    workdir = shutil.copytree(workdir, tmp_path / "run")
    (workdir / rundir.RESULT_FILE).unlink()  # the test would run again, with the best checkpoint
    largest = max((workdir / "checkpoints" / "best").glob("*/model/ocdbt.process_0/d/*"), key=os.path.getsize)
    with open(largest, "r+b") as f:
        f.truncate(os.path.getsize(largest) // 2)
    metrics = (workdir / rundir.METRICS_FILE).read_text()
    with pytest.raises(
        checkpoint.CheckpointError, match=r"the best checkpoint .*best/25, the model this run would"
    ):
        trainer.train_and_evaluate(config, str(workdir))
    assert (workdir / rundir.METRICS_FILE).read_text() == metrics  # refused before anything was written
    assert not (workdir / rundir.LOCK_FILE).exists()


@pytest.mark.slow
def test_testing_a_finished_run_again_says_that_only_the_test_is_left(finished, tmp_path, capsys):
    """result.json deleted: the same command tests the best checkpoint again. (Before: 'resuming ... at
    step 25: epoch 2, step 0 of 25', an epoch after the last.)"""
    workdir, config = finished
    workdir = shutil.copytree(workdir, tmp_path / "run")
    (workdir / rundir.RESULT_FILE).unlink()
    capsys.readouterr()
    trainer.train_and_evaluate(config, str(workdir))
    assert f"resuming {workdir} at step 25: training done, the test is left\n" in capsys.readouterr().out
    assert (workdir / rundir.RESULT_FILE).exists()


@pytest.mark.slow
def test_a_damaged_shard_is_named(demo_data_dir, tmp_path):
    shutil.copytree(os.path.join(demo_data_dir, "bridgegap_demo"), tmp_path / "data" / "bridgegap_demo")
    shard = next((tmp_path / "data").glob("bridgegap_demo/*/bridgegap_demo-train.array_record-*"))
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) // 2)
    message = one_line_error(
        run("-m", "bridgegap_jax.main", *demo_flags(tmp_path / "run", tmp_path / "data"))
    )
    assert f"damaged file(s) {shard.name} cannot be read" in message
    assert "python -m bridgegap_jax.prepare demo" in message and "--overwrite" in message


def test_a_malformed_safetensors_file_is_one_line(tmp_path):
    header = json.dumps({"conv1.weight": {"shape": [64, 3, 7, 7], "data_offsets": [0, 4]}}).encode()
    path = tmp_path / "model.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)
    message = one_line_error(
        run("-m", "bridgegap_jax.model.pretrained", f"--source={path}", f"--out={tmp_path / 'out'}")
    )
    assert str(path) in message and "lacks a dtype" in message


def test_a_pth_file_that_torch_refuses_is_one_line(tmp_path):
    torch = pytest.importorskip("torch", reason="torch is a test extra; only .pth files need it")

    class Payload:  # a pickle that would run code: weights_only=True refuses it
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "crafted.pth"
    torch.save({"conv1.weight": Payload()}, path)
    done = run("-m", "bridgegap_jax.model.pretrained", f"--source={path}", f"--out={tmp_path / 'out'}")
    message = one_line_error(done)
    assert "torch refused to load it with weights_only=True" in message and "pwned" not in done.stdout


def test_when_every_image_fails_the_manifest_it_names_exists(tmp_path, capsys):
    made = fake.make("voc", str(tmp_path / "download"))
    for name in os.listdir(made["image_root"]):
        with open(os.path.join(made["image_root"], name), "wb") as f:
            f.write(b"not a jpeg")
    assert (
        cli.main(
            ["voc", f"--source={tmp_path / 'download'}", f"--data_dir={tmp_path / 'data'}", "--workers=1"]
        )
        == 2
    )
    message = capsys.readouterr().err.strip()
    manifest = message.split("; ")[1].split(" lists")[0]
    assert "none of its" in message and os.path.isfile(manifest)
    assert len(writer.read_manifest(manifest)) > 0
    assert not (tmp_path / "data" / "bridgegap_voc").exists()  # nothing that looks prepared


# --- 8. metrics.jsonl -------------------------------------------------------------------------
def test_metrics_are_strict_json_with_null_for_non_finite_values(tmp_path):
    log = RunLog(rundir.RunDir(str(tmp_path)), enabled=True)
    log.record("train", 3, loss=float("nan"), k=2, images_per_second=float("inf"))
    log.close()
    record = json.loads((tmp_path / rundir.METRICS_FILE).read_text(), parse_constant=lambda c: pytest.fail(c))
    assert record["loss"] is None and record["images_per_second"] is None and record["k"] == 2


# --- SIGTERM, a crash in the middle of a checkpoint save, a damaged checkpoint ------------------
def package_only(tmp_path) -> dict:
    """An environment in which bridgegap_jax imports from this checkout but `configs` does not, as
    after `pip install`: a config file given by its path must find its own package."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "bridgegap_jax").symlink_to(os.path.join(ROOT, "bridgegap_jax"))
    return dict(os.environ, PYTHONPATH=str(site))


@pytest.mark.slow
def test_sigterm_a_kill_in_a_save_and_a_damaged_checkpoint_resume_to_the_uninterrupted_end(
    uninterrupted, demo_data_dir, tmp_path
):
    split = str(tmp_path / "split")
    flags = demo_flags(split, demo_data_dir)

    # 1. SIGTERM mid-epoch, as a preempted machine sends it; started from another directory with the
    # config file's absolute path.
    config_file = os.path.join(ROOT, TINY_DEMO)  # configs/demo.py:tiny
    first = subprocess.Popen(
        [sys.executable, "-m", "bridgegap_jax.main", f"--config={config_file}", *flags[1:]],
        cwd=tmp_path,
        env=package_only(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in first.stdout:
        if line.startswith("epoch 1/2 step 15/25"):
            first.send_signal(signal.SIGTERM)
            break
    _, stderr = first.communicate(timeout=300)
    step, _ = latest_params(split)
    assert first.returncode == 143, stderr[-3000:]
    assert stderr == (
        f"error: stopped by SIGTERM at step {step}; rerun the same command to resume {split} from its "
        f"checkpoint at step {step}\n"
    )
    assert 15 <= step < 25  # the next step after the signal, mid-epoch
    assert not os.path.exists(os.path.join(split, rundir.LOCK_FILE))

    # 2. Resumed with fields that only decide what happens next changed, then killed during the save
    # of step 35 (orbax writes asynchronously: the kill lands in the middle of the write).
    changed = [*flags, "--config.train.log_every_steps=7", "--config.data.workers=2"]
    killed = run(os.path.join("tests", "fault_driver.py"), "kill-during-save", "35", *changed)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert f"resuming {split} at step {step}: epoch 1, step {step} of 25" in killed.stdout
    assert os.path.exists(os.path.join(split, rundir.LOCK_FILE))  # left behind by the killed process

    # 3. The newest checkpoint left (step 25, the end of epoch 1) damaged: the one before it is used.
    latest = os.path.join(split, "checkpoints", "latest")
    saved = sorted(int(name) for name in os.listdir(latest) if name.isdigit())
    assert saved[-1] == 25 and saved[-2] in (20, step)  # 35 was never committed
    data = max(
        glob.glob(os.path.join(latest, "25", "state", "ocdbt.process_0", "d", "*")), key=os.path.getsize
    )
    with open(data, "r+b") as f:
        f.truncate(os.path.getsize(data) // 2)
    resumed = run("-m", "bridgegap_jax.main", *changed)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert re.search(
        rf"^the checkpoint at step 25 cannot be restored \(.+\); set aside as {latest}/damaged_25, resuming from "
        rf"the one at step {saved[-2]}$",
        resumed.stdout,
        re.MULTILINE,
    ), resumed.stdout
    assert os.path.isdir(os.path.join(latest, "damaged_25"))

    assert_ends_as(split, uninterrupted)
    with open(os.path.join(split, rundir.METRICS_FILE)) as f:
        changes = [(r["step"], r["changed"]) for r in map(json.loads, f) if r["kind"] == "config"]
    assert changes == [(step, {"data.workers": [0, 2], "train.log_every_steps": [5, 7]})]


@pytest.mark.slow
def test_a_stop_during_a_validation_saves_where_training_stood(
    uninterrupted, tiny_config, tmp_path, monkeypatch
):
    """The stop asked for by a signal (stopping.py) in the middle of epoch 1's validation: the epoch's
    training is saved and the validation is done again, then saved over the same step."""
    evaluate = trainer.Trainer._evaluate

    def signal_during_validation(self, split, model_vars, batches):
        monkeypatch.setattr(stopping, "_received", signal.SIGTERM)
        return evaluate(self, split, model_vars, batches)

    monkeypatch.setattr(trainer.Trainer, "_evaluate", signal_during_validation)
    workdir = str(tmp_path / "run")
    with pytest.raises(stopping.Stopped, match="stopped by SIGTERM at step 25"):
        trainer.train_and_evaluate(tiny_config, workdir)
    step, _ = latest_checkpoint(workdir)
    assert step == 25 and "validation" not in open(os.path.join(workdir, rundir.METRICS_FILE)).read()
    monkeypatch.undo()
    trainer.train_and_evaluate(tiny_config, workdir)
    assert_ends_as(workdir, uninterrupted)


def test_a_damaged_checkpoints_reason_is_what_tensorstore_found(tmp_path):
    """(Before: 'Exception: Encountered error while reading array index: (slice(0, 4096, 1),). See full
    TensorStore details: <bound method pybind11_detail_function_record_', orbax's wrapper cut at 200.)"""
    checkpoints = checkpoint.RunCheckpoints(tmp_path / "checkpoints")
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    state = {
        "train": {"w": jnp.asarray(np.random.default_rng(0).standard_normal(4096, np.float32))},
        "host": {},
    }
    for step in (10, 20):
        checkpoints.save_latest(step, state, {"epoch": 1})
    checkpoints.close()
    data = max(
        (tmp_path / "checkpoints" / "latest" / "20").glob("state/ocdbt.process_0/d/*"), key=os.path.getsize
    )
    size = os.path.getsize(data) // 2
    os.truncate(data, size)
    checkpoints = checkpoint.RunCheckpoints(tmp_path / "checkpoints")
    checkpoints.restore_latest(
        jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), state)
    )
    checkpoints.close()
    [(step, reason, _)] = checkpoints.set_aside
    assert step == 20 and re.fullmatch(
        rf'ValueError: OUT_OF_RANGE: Error reading "train.w/0" in OCDBT database at local file '
        rf'"{tmp_path}/checkpoints/latest/20/state/": Requested byte range \[0, \d+\) is not valid for value of '
        rf"size {size}",
        reason,
    ), reason


def test_unfinished_saves_are_removed_with_one_line(tmp_path):
    """The temporary folders of saves that a crash or a second Ctrl-C cut short (the run's start, with
    the workdir locked); tests/test_interrupts.py makes one for real."""
    checkpoints = checkpoint.RunCheckpoints(tmp_path / "checkpoints")
    for name in (
        "latest/15.orbax-checkpoint-tmp",
        "latest/16.orbax-checkpoint-tmp-1700000000",
        "best/25.orbax-checkpoint-tmp",
    ):
        (tmp_path / "checkpoints" / name / "state").mkdir(parents=True)
    removed = "best/25.orbax-checkpoint-tmp, latest/15.orbax-checkpoint-tmp, latest/16.orbax-checkpoint-tmp-1700000000"
    assert checkpoints.remove_unfinished_saves() == [
        f"removed 3 unfinished checkpoint save(s) left by an interrupted run: {removed}"
    ]
    assert checkpoints.remove_unfinished_saves() == []  # said once
    assert sorted(os.listdir(tmp_path / "checkpoints" / "latest")) == []
    checkpoints.close()
