"""Runs tests/multidevice in a child pytest with 8 virtual CPU devices; checks main's multi-process flags."""

import os
import re
import subprocess
import sys

import jax
import pytest
from conftest import DEMO_DATA_DIR_VAR, EIGHT_DEVICES_FLAG

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_multidevice_tests_pass_on_8_virtual_devices(demo_data_dir, tmp_path):
    env = dict(os.environ, XLA_FLAGS=EIGHT_DEVICES_FLAG, **{DEMO_DATA_DIR_VAR: demo_data_dir})
    command = [
        sys.executable,
        "-m",
        "pytest",
        "tests/multidevice",
        "-q",
        "-rs",
        "-p",
        "no:cacheprovider",
        f"--basetemp={tmp_path}",
    ]
    child = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    print(child.stdout[-3000:])
    assert child.returncode == 0, f"child pytest failed:\n{child.stdout[-20000:]}\n{child.stderr[-5000:]}"
    summary = child.stdout.strip().splitlines()[-1]
    assert re.match(r"^8 passed in ", summary), summary  # every multi-device test ran; none skipped


def test_multi_process_flags_need_distributed_and_shared_storage(monkeypatch):
    from absl import app

    from bridgegap_jax import main

    with pytest.raises(
        app.UsageError, match="--coordinator_address, --process_id only apply .*add --distributed"
    ):
        main.initialize_distributed(False, "localhost:1234", None, 1)
    main.check_shared_workdir("/local/run", workdir_is_shared=False)  # one process: any path
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(
        app.UsageError, match="--workdir=/local/run is a local path, but this run has 2 processes"
    ):
        main.check_shared_workdir("/local/run", workdir_is_shared=False)
    main.check_shared_workdir("/nfs/run", workdir_is_shared=True)
    main.check_shared_workdir("gs://bucket/run", workdir_is_shared=False)
