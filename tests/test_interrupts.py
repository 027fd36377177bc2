"""Stop signals at any moment of the real command, beside a CPU hog (the machine it runs on is busy).

Each test sends real signals at a named moment: while main imports absl (its first heavy import,
slowed by an import hook in a sitecustomize so the moment lasts), once the workdir is locked during
start-up, while the stop's own checkpoint save is in flight (its commit slowed by
tests/fault_driver.py, as on a slow disk), and mid-epoch with decoding workers (SIGHUP to the whole
process group, as a closed terminal sends it). (Ctrl-C mid-epoch: tests/test_console.py; SIGTERM
mid-epoch: tests/test_faults.py.)
"""

import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import ROOT, demo_flags

from bridgegap_jax.run import rundir

EXIT_CODES = {signal.SIGINT: 2, signal.SIGTERM: 143, signal.SIGHUP: 129}
WHAT = {
    signal.SIGINT: "interrupted",
    signal.SIGTERM: "stopped by SIGTERM",
    signal.SIGHUP: "stopped by SIGHUP",
}
SLOW_IMPORT = '''
import importlib.abc, os, sys, time


class SlowImport(importlib.abc.MetaPathFinder):
    """Marks the moment NAME starts to be imported, and makes that import take SECONDS."""

    def find_spec(self, name, path, target=None):
        if name == os.environ["SLOW_IMPORT"]:
            sys.meta_path.remove(self)
            open(os.environ["SLOW_IMPORT_MARK"], "w").close()
            time.sleep(float(os.environ["SLOW_IMPORT_SECONDS"]))
        return None


sys.meta_path.insert(0, SlowImport())
'''


@pytest.fixture
def cpu_hog():
    """A process that keeps a core busy while the test runs."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    yield
    hog.kill()
    hog.wait()


def start(workdir, data_dir, *, driver=(), env=None, workers=0, new_session=False):
    """The command (or tests/fault_driver.py with `driver` = (FAULT, STEP)) on the tiny demo."""
    args = [os.path.join("tests", "fault_driver.py"), *driver] if driver else ["-m", "bridgegap_jax.main"]
    return subprocess.Popen(
        [sys.executable, *args, *demo_flags(workdir, data_dir, data__workers=workers)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=new_session,
    )


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"no {what} in {seconds} s"
        time.sleep(0.01)


def ended(process, signals, gap=0.05, limit=600):
    """Send `signals` to `process` (`gap` s apart); (exit code, stdout, stderr, seconds from the last
    signal to the end)."""
    for i, signum in enumerate(signals):
        if i:
            time.sleep(gap)
        process.send_signal(signum)
        sent = time.monotonic()
    stdout, stderr = process.communicate(timeout=limit)
    return process.returncode, stdout, stderr, time.monotonic() - sent


def saves_in_flight(workdir, after_step=-1) -> list[str]:
    """The temporary folders of the latest checkpoints' saves under way (or abandoned) after `after_step`."""
    latest = os.path.join(workdir, "checkpoints", "latest")
    names = os.listdir(latest) if os.path.isdir(latest) else []
    return sorted(n for n in names if "orbax-checkpoint-tmp" in n and int(n.split(".")[0]) > after_step)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_stop_while_main_imports_absl_is_one_line_and_leaves_nothing(
    signum, cpu_hog, demo_data_dir, tmp_path
):
    """(Before: Ctrl-C there printed a traceback from inside `from absl import app, flags`, SIGHUP and
    SIGTERM killed the process without a word.)"""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SLOW_IMPORT)
    mark, workdir = tmp_path / "importing_absl", tmp_path / "run"
    env = dict(
        os.environ,
        PYTHONPATH=str(site),
        SLOW_IMPORT="absl",
        SLOW_IMPORT_MARK=str(mark),
        SLOW_IMPORT_SECONDS="5",
    )
    process = start(workdir, demo_data_dir, env=env)
    wait_for(mark.exists, 120, "import of absl")
    code, stdout, stderr, seconds = ended(process, [signum])
    assert (code, stderr) == (
        EXIT_CODES[signum],
        f"error: {WHAT[signum]} before the run started (its workdir was not touched)\n",
    )
    assert seconds < 2 and stdout == "" and not workdir.exists()


@pytest.mark.slow
@pytest.mark.parametrize("count", [1, 2], ids=["once", "twice"])
def test_ctrl_c_once_the_new_workdir_is_locked_ends_at_once_and_removes_it(
    count, cpu_hog, demo_data_dir, tmp_path
):
    """During start-up (the model is being built and compiled): nothing to save. (Before: the command
    waited for the whole start-up, ~40 s here, and left config.json, checkpoints/ and tensorboard/;
    two Ctrl-Cs ended in a segmentation fault, exit code -11.)"""
    workdir = tmp_path / "run"
    process = start(workdir, demo_data_dir)
    wait_for((workdir / rundir.LOCK_FILE).exists, 300, "lock.json")
    code, _, stderr, seconds = ended(process, [signal.SIGINT] * count)
    assert code == 2, stderr[-3000:]
    assert (
        stderr == f"error: interrupted before anything was saved: {workdir}, made by this start, is removed\n"
    )
    assert seconds < 2 and not workdir.exists()


@pytest.mark.slow
def test_a_second_ctrl_c_during_the_stops_save_ends_at_once_and_the_next_start_cleans_up(
    cpu_hog, demo_data_dir, tmp_path
):
    """The first Ctrl-C (mid-epoch) saves where the run stands; that save takes 20 s to commit (a slow
    disk), and a second Ctrl-C abandons it. A stop during the next start-up (a resumed run) keeps the
    checkpoint and releases the lock; the start after it removes the abandoned save's temporary folder,
    says so once, and finishes. (Before: the second Ctrl-C waited for the save; the folder stayed.)"""
    workdir = tmp_path / "run"
    first = start(workdir, demo_data_dir, driver=("slow-commit", "10"))
    for line in first.stdout:
        if line.startswith("epoch 1/2 step 15/25"):  # after the checkpoint of step 10
            break
    first.send_signal(signal.SIGINT)
    wait_for(lambda: saves_in_flight(workdir, 10) or first.poll() is not None, 60, "save in flight")
    abandoned = saves_in_flight(workdir, 10)  # the stop's, at the step after the signal
    assert len(abandoned) == 1 and int(abandoned[0].split(".")[0]) >= 15, abandoned
    code, _, stderr, seconds = ended(first, [signal.SIGINT])
    resume = f"rerun the same command to resume {workdir} from its checkpoint at step 10"
    assert (code, stderr) == (2, f"error: interrupted again: stopped without saving; {resume}\n")
    assert seconds < 2 and not (workdir / rundir.LOCK_FILE).exists()
    assert saves_in_flight(workdir) == abandoned  # left for the next start

    second = start(workdir, demo_data_dir)  # stopped during its start-up: nothing new to save
    wait_for((workdir / rundir.LOCK_FILE).exists, 300, "lock.json")
    code, started, stderr, seconds = ended(second, [signal.SIGTERM])
    assert (code, stderr) == (143, f"error: stopped by SIGTERM; {resume}\n")
    assert seconds < 2 and not (workdir / rundir.LOCK_FILE).exists()

    third = start(workdir, demo_data_dir)
    stdout, stderr = third.communicate(timeout=600)
    assert third.returncode == 0, stderr[-3000:]
    removed = f"removed 1 unfinished checkpoint save(s) left by an interrupted run: latest/{abandoned[0]}"
    assert (started + stdout).count(removed) == 1  # by whichever start got to it first
    assert saves_in_flight(workdir) == [] and "test: test mAP" in stdout


@pytest.mark.slow
def test_sighup_to_the_process_group_saves_and_is_one_line(cpu_hog, demo_data_dir, tmp_path):
    """A closed terminal or ssh connection sends SIGHUP to every process of the job, decoding workers
    too: the run saves where it stands and ends as for SIGTERM, with exit code 129. (Before: it died at
    once, without a line, leaving lock.json and a half-written checkpoint.)"""
    workdir = tmp_path / "run"
    process = start(workdir, demo_data_dir, workers=2, new_session=True)
    for line in process.stdout:
        if line.startswith("epoch 1/2 step 15/25"):
            break
    os.killpg(process.pid, signal.SIGHUP)
    _, stderr = process.communicate(timeout=300)
    step = int(stderr.split(" at step ")[1].split(";")[0]) if " at step " in stderr else None
    assert process.returncode == 129, stderr[-3000:]
    assert stderr == (
        f"error: stopped by SIGHUP at step {step}; rerun the same command to resume {workdir} from its "
        f"checkpoint at step {step}\n"
    )
    assert 15 <= step < 25 and not (workdir / rundir.LOCK_FILE).exists() and saves_in_flight(workdir) == []
