"""Entry point: python -m bridgegap_jax.main --config=configs/demo.py --workdir=runs/demo

Rerunning the same command resumes an interrupted run, or reports a finished one.

Several hosts (one process per host, every process runs the same command plus --distributed):
  - Cloud TPU pod: ... --workdir=gs://BUCKET/run --distributed (jax.distributed detects the workers;
    also on SLURM and Open MPI)
  - other CPU/GPU hosts: ... --distributed --coordinator_address=HOST0:PORT --num_processes=N --process_id=I
The workdir must be storage that every host sees: gs://..., or a shared file system
(NFS) mounted at the same path everywhere, declared with --workdir_is_shared.

A mistake the user can fix (a config value, a missing dataset or weights file, a busy workdir, a
full disk, Ctrl-C) ends with one line on stderr and exit code 2; --debug shows the traceback.
"""

from __future__ import annotations

import errno
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from bridgegap_jax import xla_options

config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py); override fields with --config.a.b=value.", lock_config=True
)
flags.DEFINE_string(
    "workdir", None, "Directory of the run: checkpoints, metrics.jsonl, TensorBoard, result.json."
)
flags.DEFINE_bool(
    "distributed",
    False,
    "Join a multi-process run (jax.distributed.initialize): every process passes "
    "it. Cloud TPU pods, SLURM and Open MPI need nothing else; other clusters also give "
    "--coordinator_address, --num_processes and --process_id.",
)
flags.DEFINE_string(
    "coordinator_address", None, "With --distributed: host:port of process 0, reachable from every process."
)
flags.DEFINE_integer("num_processes", None, "With --distributed: the number of processes.")
flags.DEFINE_integer("process_id", None, "With --distributed: this process's id, 0 .. num_processes - 1.")
flags.DEFINE_bool(
    "workdir_is_shared",
    False,
    "A multi-process run may use a local --workdir path: it is a shared "
    "file system (NFS) that every process sees at that path.",
)
flags.DEFINE_bool(
    "verbose", False, "Also show what the libraries log (orbax, grain, absl) and their warnings."
)
flags.DEFINE_string(
    "xla_options",
    "",
    "Comma-separated XLA GPU compiler presets (bridgegap_jax/xla_options.py: "
    "conv-fusion, nhwc, exhaustive); speed only, so not part of the run's config.",
)
flags.DEFINE_bool("debug", False, "Show the full traceback of an error instead of its one-line message.")

EXIT_USER_ERROR = 2


def fail(message: str) -> None:
    """One line on stderr, exit code 2."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with a bad --config override or config file reported in one line."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, ValueError, TypeError, OSError) as error:
        if "--debug" in argv:
            raise
        text = str(error).strip().strip("'\"").replace("\\n", " ").replace("\\'", "'")
        if isinstance(error, (AttributeError, KeyError)):  # an override naming a field that does not exist
            text = f"a --config.* override names a field that does not exist: {text} (README, Running)"
        fail(text)


def quiet_libraries(verbose: bool) -> None:
    """Our lines only: the libraries' INFO logs and warnings are for --verbose."""
    from absl import logging

    if verbose:
        logging.set_verbosity(logging.INFO)
        return
    import warnings

    logging.set_verbosity(logging.ERROR)  # orbax logs every file it writes; grain its pools
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # C++ logs of XLA plugins that share TF's logger


def initialize_distributed(distributed: bool, coordinator_address, num_processes, process_id) -> None:
    """jax.distributed.initialize, before anything touches a device; a no-op without --distributed."""
    given = {
        "coordinator_address": coordinator_address,
        "num_processes": num_processes,
        "process_id": process_id,
    }
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


def disk_full(error: BaseException) -> OSError | None:
    """The 'no space left on device' error behind `error`, if that is what it is."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return error
        if "No space left on device" in str(error):
            return OSError(errno.ENOSPC, "No space left on device")
        error = error.__cause__ or error.__context__
    return None


def resume_hint(workdir: str) -> str:
    """What rerunning the same command will do, from the checkpoints in `workdir`."""
    from bridgegap_jax.rundir import RunDir

    latest = RunDir(workdir).checkpoints / "latest"
    steps = [int(p.name) for p in latest.iterdir() if p.name.isdigit()] if latest.is_dir() else []
    if not steps:
        return "no checkpoint was saved yet: rerunning the same command starts the run again"
    return f"rerun the same command to resume {workdir} from its checkpoint at step {max(steps)}"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    FLAGS = flags.FLAGS
    quiet_libraries(FLAGS.verbose)
    from bridgegap_jax.errors import UserError

    workdir = FLAGS.workdir
    try:
        xla_options.apply(FLAGS.xla_options)  # before any device use: XLA reads its flags once
        initialize_distributed(
            FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
        )
        check_shared_workdir(workdir, FLAGS.workdir_is_shared)
        from bridgegap_jax import trainer  # after flag parsing: --help stays fast

        trainer.train_and_evaluate(FLAGS.config, workdir)
    except UserError as error:
        if FLAGS.debug:
            raise
        fail(error)
    except KeyboardInterrupt:
        if FLAGS.debug:
            raise
        sys.unraisablehook = lambda unraisable: (
            None
        )  # what the interrupt left half-built fails when collected
        fail(f"interrupted; {resume_hint(workdir)}")
    except Exception as error:  # noqa: BLE001 - only a full disk is turned into a message; the rest re-raises
        full = disk_full(error)
        if full is None or FLAGS.debug:
            raise
        fail(
            f"no space left on the device holding {full.filename or workdir}: free some space (or choose another "
            f"--workdir / --config.data.data_dir); then {resume_hint(workdir)}"
        )


def run() -> None:
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
