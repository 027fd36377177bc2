"""launch/ dry runs print complete gcloud / python command lines and name missing settings."""

import os
import shlex
import subprocess
import sys

import pytest

LAUNCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "launch")


def dry_run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, os.path.join(LAUNCH, script), "--dry-run", *args], capture_output=True, text=True
    )


def printed_commands(out: str) -> list[list[str]]:
    return [shlex.split(line[2:].split("  #")[0]) for line in out.splitlines() if line.startswith("$ ")]


POD = [
    "--name=bg-oi",
    "--project=my-project",
    "--workdir=gs://bucket/runs/oi",
    "--data_dir=gs://bucket/tfds",
    "--pretrained=gs://bucket/weights/resnet101_v1",
]


@pytest.mark.parametrize(
    "accelerator, zone, runtime",
    [
        ("v4-32", "us-central2-b", "tpu-ubuntu2204-base"),
        ("v5litepod-64", "us-west4-a", "v2-alpha-tpuv5-lite"),
    ],
)
def test_tpu_pod_dry_run_prints_every_command(accelerator, zone, runtime):
    result = dry_run(
        "tpu_pod.py",
        "create",
        "setup",
        "run",
        "delete",
        *POD,
        f"--zone={zone}",
        f"--accelerator_type={accelerator}",
        "--spot",
        "--",
        "--config.loss.scheme=LL-Cp",
    )
    assert result.returncode == 0, result.stderr
    create, tar, scp, setup, mount, run, delete = printed_commands(result.stdout)
    scope = ["--project=my-project", f"--zone={zone}"]
    assert create == [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "create",
        "bg-oi",
        f"--accelerator-type={accelerator}",
        f"--version={runtime}",
        "--spot",
        *scope,
    ]
    assert tar[:2] == ["tar", "-czf"] and {"bridgegap_jax", "configs", "pyproject.toml"} <= set(tar)
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp
    assert setup[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "bg-oi"] and "--worker=all" in setup
    assert "pip install" in setup[7] and "jax[tpu]" in setup[7] and setup[7].startswith("--command=")
    assert "constraints.txt" in setup[7] and "constraints.txt" in tar  # the pinned versions
    # The data bucket is mounted read-only on every worker; the run reads the ArrayRecord files there.
    assert mount[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "bg-oi", "--worker=all"]
    assert "gcsfuse --implicit-dirs -o ro bucket /mnt/gcs/bucket" in mount[7]
    assert (
        run[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "bg-oi", "--worker=all"]
        and run[8:] == scope
    )
    remote = run[7].removeprefix("--command=")
    assert (
        "python -m bridgegap_jax.main --config=configs/openimages.py --workdir=gs://bucket/runs/oi "
        "--config.data.data_dir=/mnt/gcs/bucket/tfds --config.model.pretrained=gs://bucket/weights/resnet101_v1 "
        "--distributed --config.loss.scheme=LL-Cp"
    ) in remote
    assert delete == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "bg-oi", "--quiet", *scope]


def test_tpu_pod_queued_resource():
    result = dry_run(
        "tpu_pod.py",
        "create",
        "delete",
        *POD,
        "--zone=us-west4-a",
        "--accelerator_type=v5litepod-64",
        "--queued",
    )
    assert result.returncode == 0, result.stderr
    create, wait, delete = printed_commands(result.stdout)
    assert create[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "bg-oi"]
    assert "--node-id=bg-oi" in create and "--accelerator-type=v5litepod-64" in create
    assert "--runtime-version=v2-alpha-tpuv5-lite" in create
    assert wait[:6] == ["gcloud", "compute", "tpus", "queued-resources", "describe", "bg-oi"]
    assert (
        delete[:6] == ["gcloud", "compute", "tpus", "queued-resources", "delete", "bg-oi"]
        and "--force" in delete
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["run", "--name=x", "--zone=z", "--workdir=gs://b/r", "--data_dir=gs://b/d"],
            "step 'run' needs --project",
        ),
        (["create", "--name=x", "--project=p", "--zone=z"], "step 'create' needs --accelerator_type"),
        (["create", "--name=x", "--project=p", "--zone=z", "--accelerator_type=v5e-64"], "named v5litepod-N"),
        (
            ["run", *POD[:2], "--zone=z", "--workdir=/home/me/run", "--data_dir=gs://b/d"],
            "--workdir=/home/me/run must be a gs://",
        ),
        (["run", *POD, "--zone=z", "--", "--steps=3"], "unrecognized arguments: --steps=3"),
    ],
)
def test_tpu_pod_names_what_is_missing(args, message):
    result = dry_run("tpu_pod.py", *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_gpu_host_dry_run():
    result = dry_run(
        "gpu_host.py", "setup", "run", "--workdir=runs/oi", "--data_dir=/data/tfds", "--gpus=0,1,2,3"
    )
    assert result.returncode == 0, result.stderr
    setup, run = printed_commands(result.stdout)
    assert (
        setup[1:4] == ["-m", "pip", "install"]
        and "jax[cuda12]" in setup
        and setup[5].endswith("constraints.txt")
    )
    assert run[:2] == ["env", "CUDA_VISIBLE_DEVICES=0,1,2,3"]
    assert run[3:] == [
        "-m",
        "bridgegap_jax.main",
        "--config=configs/openimages.py",
        "--workdir=runs/oi",
        "--config.data.data_dir=/data/tfds",
    ]
    missing = dry_run("gpu_host.py", "run", "--workdir=runs/oi")
    assert missing.returncode == 2 and "step 'run' needs --data_dir" in missing.stderr
