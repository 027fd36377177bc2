"""The console of the real command at tiny size: stdout holds only our lines, stderr nothing (no
progress bars, library banners, warnings or worker tracebacks), also with grain worker processes
and after Ctrl-C. (tests/test_end_to_end.py checks an uninterrupted run's console with check_run.)"""

import os
import re
import signal
import subprocess
import sys

import pytest
from helpers import ROOT, demo_flags

TIME = r"\d+:\d\d:\d\d"
OUR_LINES = {
    "describe": r"training demo: 1600 images, 25 steps/epoch x 1 epochs, .* on \d+ device\(s\)",
    "resume": r"resuming \S+ at step \d+: epoch \d+, step \d+ of 25",
    "progress": rf"epoch 1/1 step \d+/25 \| loss \d+\.\d{{4}} grad_norm \d+\.\d{{4}} noise (\d+(\.\d+)?|-) k \d+ "
    rf"selected \d+ \| \d+\.\d img/s \| "
    rf"{TIME} elapsed(, ETA {TIME})?",
    "validation": rf"epoch 1/1: validation mAP \d+\.\d\d( \(best\))? loss \d+\.\d{{4}}(; [^|]+)? \| "
    rf"epoch {TIME} \| {TIME} elapsed(, ETA {TIME})?",
    "test": rf"test: test mAP \d+\.\d\d \(classes without positives dropped: \d+\.\d\d\) with the "
    rf"checkpoint of epoch 1 \(validation mAP \d+\.\d\d\) \| total {TIME}",
}


def command(workdir, data_dir, workers):
    flags = demo_flags(workdir, data_dir, train__num_epochs=1, data__workers=workers)
    return [sys.executable, "-m", "bridgegap_jax.main", *flags]


def kinds_of_lines(stdout):
    """The kind of each stdout line; a line of no known kind fails."""
    kinds = []
    for line in stdout.splitlines():
        kind = next((k for k, pattern in OUR_LINES.items() if re.fullmatch(pattern, line)), None)
        assert kind is not None, f"not one of our lines: {line!r}"
        kinds.append(kind)
    return kinds


def check_run(done):
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr == ""  # no '\r' bars, oneDNN / absl banners, warnings, leaked shared_memory
    kinds = kinds_of_lines(done.stdout)
    assert kinds[0] == "describe" and kinds[-1] == "test" and "progress" in kinds
    assert kinds.count("validation") == 1 and kinds.count("resume") <= 1


@pytest.mark.slow
def test_ctrl_c_with_workers_is_one_line_and_the_rerun_is_clean(tmp_path, demo_data_dir):
    """A terminal sends Ctrl-C to the whole process group: the grain workers too. The run stops at the
    next step, wherever the signal lands (a garbage-collection callback used to swallow it), and saves."""
    stderr, workdir = tmp_path / "stderr", tmp_path / "run"
    with open(stderr, "w") as err:
        process = subprocess.Popen(
            command(workdir, demo_data_dir, 2),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            start_new_session=True,
        )
        for line in process.stdout:
            if line.startswith("epoch 1/1 step 15/25"):  # workers running; after the checkpoint of step 10
                os.killpg(process.pid, signal.SIGINT)
                break
        process.stdout.read()
        assert process.wait(timeout=300) == 2
    message = stderr.read_text()
    step = int(re.fullmatch(r"error: interrupted at step (\d+); .*\n", message)[1])
    assert message == (
        f"error: interrupted at step {step}; rerun the same command to resume {workdir} from its checkpoint at "
        f"step {step}\n"
    )
    assert 15 <= step < 25  # saved where it stopped, mid-epoch
    done = subprocess.run(
        command(workdir, demo_data_dir, 2), cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    check_run(done)
