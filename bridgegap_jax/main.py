"""Entry point: python -m bridgegap_jax.main --config=configs/demo.py --workdir=runs/demo

Rerunning the same command resumes an interrupted run, or reports a finished one.

Several hosts (one process per host, every process runs the same command plus --distributed):
  Cloud TPU pod:       ... --workdir=gs://BUCKET/run --distributed
                       (jax.distributed detects the workers; also on SLURM and Open MPI)
  other CPU/GPU hosts: ... --distributed --coordinator_address=HOST0:PORT --num_processes=N --process_id=I
The workdir must be storage that every host sees: gs://..., or a shared file system
(NFS) mounted at the same path everywhere, declared with --workdir_is_shared.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from bridgegap_jax import xla_options

config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py); override fields with --config.a.b=value.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory of the run: checkpoints, metrics.jsonl, result.json.")
flags.DEFINE_bool("distributed", False, "Join a multi-process run (jax.distributed.initialize): every process passes it. "
                  "Cloud TPU pods, SLURM and Open MPI need nothing else; other clusters also give the three flags below.")
flags.DEFINE_string("coordinator_address", None, "With --distributed: host:port of process 0, reachable from every process.")
flags.DEFINE_integer("num_processes", None, "With --distributed: the number of processes.")
flags.DEFINE_integer("process_id", None, "With --distributed: this process's id, 0 .. num_processes - 1.")
flags.DEFINE_bool("workdir_is_shared", False, "A multi-process run may use a local --workdir path: it is a shared "
                  "file system (NFS) that every process sees at that path.")
flags.mark_flags_as_required(["config", "workdir"])


def initialize_distributed(distributed: bool, coordinator_address, num_processes, process_id) -> None:
    """jax.distributed.initialize, before anything touches a device; a no-op without --distributed."""
    given = {"coordinator_address": coordinator_address, "num_processes": num_processes, "process_id": process_id}
    if not distributed:
        named = [f"--{name}" for name, value in given.items() if value is not None]
        if named:
            raise app.UsageError(f"{', '.join(named)} only apply to a multi-process run: add --distributed")
        return
    import jax

    jax.distributed.initialize(**given)


def check_shared_workdir(workdir: str, workdir_is_shared: bool) -> None:
    """Every process saves and restores the same checkpoints: a pod needs shared storage."""
    import jax

    if jax.process_count() > 1 and "://" not in workdir and not workdir_is_shared:
        raise app.UsageError(
            f"--workdir={workdir} is a local path, but this run has {jax.process_count()} processes that must all "
            "see the same checkpoints: use shared storage (--workdir=gs://BUCKET/PATH), or, if the path is a "
            "shared file system mounted on every host (NFS), add --workdir_is_shared"
        )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
    FLAGS = flags.FLAGS
    xla_options.apply(FLAGS.config.xla_options)  # before any device use: XLA reads its flags once
    initialize_distributed(FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    check_shared_workdir(FLAGS.workdir, FLAGS.workdir_is_shared)
    from bridgegap_jax import train  # after flag parsing: --help stays fast
    from bridgegap_jax.datasets.catalog import DatasetNotFoundError
    from bridgegap_jax.pretrained import WeightsNotFoundError

    try:
        train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except (DatasetNotFoundError, WeightsNotFoundError) as error:  # a missing input: one line, no traceback
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
