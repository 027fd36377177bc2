#!/usr/bin/env python3
"""Train on a Cloud TPU VM pod slice: create it, set up every worker, run, delete.

    python launch/tpu_pod.py create setup run delete --name=bg-oi --project=P --zone=us-central2-b \
        --accelerator_type=v4-32 --workdir=gs://BUCKET/runs/oi --data_dir=gs://BUCKET/tfds \
        --pretrained=gs://BUCKET/weights/resnet101_v1 [--spot] [--queued] [--dry-run] \
        [-- --config.loss.scheme=LL-Cp ...]

Steps run in the order given. `setup` copies the code to every worker, installs it (at the versions
of constraints.txt) and mounts the data bucket read-only with gcsfuse at /mnt/gcs/BUCKET: the
ArrayRecord files are read through that mount, each host reading only its own rows. Checkpoints and
metrics go to the gs:// workdir directly (orbax), and the converted weights are read from gs://.
`run` starts `python -m bridgegap_jax.main` on all workers at once (gcloud ... ssh --worker=all)
and streams their output here (only process 0 prints); if the connection drops, `run` again resumes
from the latest checkpoint. A preempted spot or queued slice saves a checkpoint at the SIGTERM and
is gone: `delete create setup run` with the same flags resumes it (docs/scale.md, Preemption). `logs`
shows worker 0's log of the last run. --dry-run prints every command instead of running it.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time

import common  # launch/common.py: the script's own folder is on sys.path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REMOTE_DIR = "bridgegap_jax"  # under the worker's home directory
TARBALL = "bridgegap_jax.tar.gz"
CODE = ["bridgegap_jax", "configs", "pyproject.toml", "constraints.txt", "README.md"]
MOUNT_ROOT = "/mnt/gcs"  # gcsfuse mounts gs://BUCKET at /mnt/gcs/BUCKET on every worker
# The TPU VM software image per generation (cloud.google.com/tpu/docs/runtimes).
RUNTIME_VERSIONS = {
    "v4": "tpu-ubuntu2204-base",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
}
STEPS = ("create", "setup", "run", "logs", "delete")
NEEDS = {  # the settings each step needs
    "create": ("name", "project", "zone", "accelerator_type"),
    "setup": ("name", "project", "zone", "data_dir"),
    "run": ("name", "project", "zone", "workdir", "data_dir"),
    "logs": ("name", "project", "zone"),
    "delete": ("name", "project", "zone"),
}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("steps", nargs="+", choices=STEPS, help="what to do, in order")
    parser.add_argument("--name", help="TPU (and queued resource) name")
    parser.add_argument("--project", help="Google Cloud project")
    parser.add_argument(
        "--zone", help="zone with capacity for the accelerator, e.g. us-central2-b (v4), us-west4-a (v5e)"
    )
    parser.add_argument(
        "--accelerator_type", help="slice type as gcloud names it: v4-32, v5litepod-64, v5p-32, v6e-64"
    )
    parser.add_argument(
        "--runtime_version", help="TPU VM image (default: the generation's, see RUNTIME_VERSIONS)"
    )
    parser.add_argument(
        "--spot",
        action="store_true",
        help="spot capacity: cheaper, may be preempted (then `delete create setup run` resumes)",
    )
    parser.add_argument(
        "--queued", action="store_true", help="create through a queued resource: waits for capacity"
    )
    common.add_run_flags(parser, "gs://..., which every worker reads and writes")
    args = common.parse_with_overrides(parser, argv)
    check(args, parser)
    return args


def check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    for step in args.steps:
        missing = [f"--{name}" for name in NEEDS[step] if not getattr(args, name)]
        if missing:
            parser.error(f"step '{step}' needs {', '.join(missing)}")
    if args.accelerator_type:
        match = re.fullmatch(r"(v4|v5litepod|v5p|v6e)-(\d+)", args.accelerator_type)
        if not match:
            hint = " (v5e slices are named v5litepod-N)" if args.accelerator_type.startswith("v5e") else ""
            parser.error(
                f"--accelerator_type={args.accelerator_type} is not a TPU slice type like v4-32 or v5litepod-64{hint}"
            )
        args.runtime_version = args.runtime_version or RUNTIME_VERSIONS[match.group(1)]
    for name in ("workdir", "data_dir", "pretrained"):
        value = getattr(args, name)
        if value and not value.startswith("gs://"):
            parser.error(f"--{name}={value} must be a gs:// path: every worker of the pod reads it")


def mounted(gs_path: str) -> str:
    """gs://BUCKET/PATH -> where every worker sees it through the gcsfuse mount."""
    return f"{MOUNT_ROOT}/{gs_path.removeprefix('gs://')}"


def mount_command(data_dir: str) -> str:
    """Install gcsfuse (Google's apt repository) and mount the data bucket read-only."""
    bucket = data_dir.removeprefix("gs://").split("/")[0]
    return (
        "set -e; if ! command -v gcsfuse >/dev/null; then "
        "echo 'deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt "
        "gcsfuse-'$(lsb_release -c -s)' main' | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null && "
        "curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee "
        "/usr/share/keyrings/cloud.google.asc >/dev/null && sudo apt-get update -qq && "
        "sudo apt-get install -y -qq gcsfuse; fi; "
        f"sudo mkdir -p {MOUNT_ROOT}/{bucket} && sudo chown $USER {MOUNT_ROOT}/{bucket} && "
        f"(mountpoint -q {MOUNT_ROOT}/{bucket} || gcsfuse --implicit-dirs -o ro {bucket} {MOUNT_ROOT}/{bucket})"
    )


def gcloud_tpu(args, *command: str) -> list[str]:
    return ["gcloud", "compute", "tpus", *command, f"--project={args.project}", f"--zone={args.zone}"]


def ssh_all(args, remote: str) -> list[str]:
    return gcloud_tpu(args, "tpu-vm", "ssh", args.name, "--worker=all", f"--command={remote}")


def main_command(args) -> str:
    """What every worker runs: the same command, joined into one run by jax.distributed."""
    flags = common.run_flags(args, mounted(args.data_dir), "--distributed")
    command = f"~/venv/bin/python -m bridgegap_jax.main {shlex.join(flags)}"
    return f"set -o pipefail; cd ~/{REMOTE_DIR} && {command} 2>&1 | tee -a ~/run.log"


def commands(args, step: str) -> list[list[str]]:
    if step == "create":
        spot = ["--spot"] if args.spot else []
        if args.queued:
            return [
                gcloud_tpu(
                    args,
                    "queued-resources",
                    "create",
                    args.name,
                    f"--node-id={args.name}",
                    f"--accelerator-type={args.accelerator_type}",
                    f"--runtime-version={args.runtime_version}",
                    *spot,
                )
            ]
        return [
            gcloud_tpu(
                args,
                "tpu-vm",
                "create",
                args.name,
                f"--accelerator-type={args.accelerator_type}",
                f"--version={args.runtime_version}",
                *spot,
            )
        ]
    if step == "setup":
        tarball = os.path.join("/tmp", TARBALL)
        install = (
            f"rm -rf ~/{REMOTE_DIR} && mkdir -p ~/{REMOTE_DIR} && tar -xzf ~/{TARBALL} -C ~/{REMOTE_DIR} && "
            f"python3 -m venv ~/venv && ~/venv/bin/pip install -q -U pip && "
            f"~/venv/bin/pip install -q -c ~/{REMOTE_DIR}/constraints.txt 'jax[tpu]' -e ~/{REMOTE_DIR}"
        )
        return [
            ["tar", "-czf", tarball, "-C", REPO, "--exclude=__pycache__", *CODE],
            gcloud_tpu(args, "tpu-vm", "scp", tarball, f"{args.name}:~/{TARBALL}", "--worker=all"),
            ssh_all(args, install),
            *([ssh_all(args, mount_command(args.data_dir))] if args.data_dir else []),
        ]
    if step == "run":
        return [ssh_all(args, main_command(args))]
    if step == "logs":
        return [gcloud_tpu(args, "tpu-vm", "ssh", args.name, "--worker=0", "--command=cat ~/run.log")]
    if args.queued:  # delete: the queued resource and, with --force, its TPU
        return [gcloud_tpu(args, "queued-resources", "delete", args.name, "--force", "--quiet")]
    return [gcloud_tpu(args, "tpu-vm", "delete", args.name, "--quiet")]


def wait_until_active(args) -> None:
    """A queued resource is created at once but its TPU only when capacity frees up."""
    describe = gcloud_tpu(args, "queued-resources", "describe", args.name, "--format=value(state.state)")
    print(f"$ {shlex.join(describe)}  # every 60 s until ACTIVE", flush=True)
    if args.dry_run:
        return
    while (
        state := subprocess.run(describe, check=True, capture_output=True, text=True).stdout.strip()
    ) != "ACTIVE":
        if state in ("FAILED", "SUSPENDED"):
            sys.exit(
                f"queued resource {args.name} is {state}: see `gcloud "
                f"compute tpus queued-resources describe {args.name}`"
            )
        time.sleep(60)


def main(argv: list[str]) -> None:
    args = parse(argv)
    for step in args.steps:
        for command in commands(args, step):
            print(f"$ {shlex.join(command)}", flush=True)
            if not args.dry_run and subprocess.run(command).returncode != 0:
                up = (
                    f"; the TPU {args.name} may still be up (and billed): `... delete`"
                    if step != "delete"
                    else ""
                )
                sys.exit(f"step '{step}' failed{up}")
        if step == "create" and args.queued:
            wait_until_active(args)


if __name__ == "__main__":
    main(sys.argv[1:])
